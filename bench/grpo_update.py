"""Benchmark: what GRPO's update and the model server's generation cost on tool-agent-shaped batches, by setting.

The batch is the tool agent's (examples/tool_agent/): 32 episodes of two calls each on SmolLM2-135M-Instruct, the
first call's prompt being the system prompt with the tool list and one worked example (281-341 tokens), the
response a `<tool_call>` block; the second call's prompt adds that call and the tool's answer. Cases, interleaved
and repeated `--repeats` times (medians reported, every run listed in the JSON):

    update   float32 / bfloat16 products  x  shared prefix on / off  x  micro-batches of 16 / 64
             (policy forward + backward over all 64 samples, then the reference model's forward)
    generate float32 / bfloat16 products: 32 first-call prompts, 40 sampled tokens each, one batch

    .venv/bin/python bench/grpo_update.py                 # every case, 3 repeats
    .venv/bin/python bench/grpo_update.py --repeats 2 --quick   # micro-batches of 16 only
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples" / "tool_agent"))

from agent import CALCULATOR_TOOL, first_messages  # noqa: E402

from agl.algorithm.grpo_math import response_token_logprobs  # noqa: E402
from agl.llm.device import compute_context  # noqa: E402
from agl.llm.engine import GenerationEngine, GenerationRequest, SequenceEvent  # noqa: E402
from agl.llm.model import load_model  # noqa: E402
from agl.llm.sampling import SamplingParams  # noqa: E402
from agl.llm.tools import render_tools_for_template  # noqa: E402

DTYPES = {"float32": None, "bfloat16": torch.bfloat16}


def episodes(tokenizer: Any, count: int) -> tuple[list[list[int]], list[list[int]]]:
    """Prompts and responses of `count` two-call episodes (one sample per call)."""
    lines = (ROOT / "examples" / "tool_agent" / "data" / "train.jsonl").read_text().splitlines()
    tasks = [json.loads(line) for line in lines[: count // 2]] * 2

    def ids(messages: list[dict[str, Any]]) -> list[int]:
        rendered = render_tools_for_template(messages, [CALCULATOR_TOOL])
        out: list[int] = tokenizer.apply_chat_template(
            rendered, tokenize=True, add_generation_prompt=True, return_dict=False
        )
        return out

    prompts: list[list[int]] = []
    responses: list[list[int]] = []
    for task in tasks:
        arguments = json.dumps({"expression": task["expression"]})
        call = f'<tool_call>\n{{"name": "calculator", "arguments": {arguments}}}\n</tool_call><|im_end|>'
        first = first_messages(task)
        second = [
            *first,
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c", "type": "function", "function": {"name": "calculator", "arguments": arguments}}
                ],
            },
            {"role": "tool", "tool_call_id": "c", "content": str(task["answer"])},
        ]
        prompts += [ids(first), ids(second)]
        responses += [
            tokenizer(call, add_special_tokens=False)["input_ids"],
            tokenizer(f"{task['answer']}<|im_end|>", add_special_tokens=False)["input_ids"],
        ]
    return prompts, responses


def time_update(
    model: Any,
    reference: Any,
    prompts: list[list[int]],
    responses: list[list[int]],
    dtype: str,
    shared: bool,
    micro: int,
) -> float:
    """Seconds for the policy's forward + backward and the reference's forward over every sample."""
    device = torch.device("cpu")
    min_shared = 8 if shared else 10**9
    model.train()
    started = time.perf_counter()
    for start in range(0, len(prompts), micro):
        chunk_p, chunk_r = prompts[start : start + micro], responses[start : start + micro]
        with compute_context(DTYPES[dtype], device):
            logp, _ = response_token_logprobs(model, chunk_p, chunk_r, 0, device=device, min_shared=min_shared)
        logp.sum().backward()
        with torch.no_grad(), compute_context(DTYPES[dtype], device):
            response_token_logprobs(reference, chunk_p, chunk_r, 0, device=device, min_shared=min_shared)
    seconds = time.perf_counter() - started
    model.zero_grad(set_to_none=True)
    model.eval()
    return seconds


def time_generation(model: Any, tokenizer: Any, prompts: list[list[int]], dtype: str) -> tuple[float, int]:
    """Seconds and tokens for one batch of every prompt, 40 sampled tokens each."""
    engine = GenerationEngine(
        model, tokenizer, max_batch_size=len(prompts), batch_window=0.5, compute_dtype=DTYPES[dtype]
    )
    engine.start()
    left = [len(prompts)]
    done = threading.Event()
    tokens = [0]

    def sink(events: list[SequenceEvent]) -> None:
        for event in events:
            tokens[0] += len(event.token_ids)
            if event.finish_reason:
                left[0] -= 1
                if not left[0]:
                    done.set()

    started = time.perf_counter()
    try:
        for k, prompt in enumerate(prompts):
            params = SamplingParams(max_tokens=40, temperature=0.7, seed=k)
            engine.submit(GenerationRequest(prompt_ids=prompt, params=params, sink=sink))
        if not done.wait(1800):
            raise RuntimeError("generation did not finish in 30 minutes")
        return time.perf_counter() - started, tokens[0]
    finally:
        engine.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--episodes", type=int, default=32)
    parser.add_argument("--quick", action="store_true", help="micro-batches of 16 only (the tool agent's setting)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "grpo_update.json"))
    args = parser.parse_args()

    model, tokenizer = load_model(None, device="cpu")
    reference = copy.deepcopy(model).eval()
    prompts, responses = episodes(tokenizer, args.episodes)
    first_calls = prompts[0::2]
    cases: list[tuple[str, str, bool, int]] = []
    for dtype in DTYPES:
        cases.append(("generate", dtype, True, 0))
        for shared in (True, False):
            for micro in (64, 16):
                if args.quick and micro != 16:
                    continue
                cases.append(("update", dtype, shared, micro))
    runs: dict[tuple[str, str, bool, int], list[dict[str, float]]] = {case: [] for case in cases}
    time_update(model, reference, prompts[:4], responses[:4], "float32", True, 4)  # warm-up
    for repeat in range(args.repeats):
        for case in cases:
            kind, dtype, shared, micro = case
            load = os.getloadavg()[0]
            if kind == "update":
                seconds = time_update(model, reference, prompts, responses, dtype, shared, micro)
                runs[case].append({"seconds": seconds, "load": load})
            else:
                seconds, tokens = time_generation(model, tokenizer, first_calls, dtype)
                runs[case].append({"seconds": seconds, "tokens": tokens, "load": load})
            print(
                f"  run {repeat + 1}: {kind} {dtype} shared={shared} micro={micro}: {seconds:.1f} s (load {load:.1f})"
            )
    print()
    print(
        f"{len(prompts)} samples ({len(first_calls)} episodes x 2 calls); prompts {min(map(len, prompts))}-"
        f"{max(map(len, prompts))} tokens, responses up to {max(map(len, responses))}"
    )
    print(f"{'case':<44} {'median s':>9}  runs")
    table = []
    for case, results in runs.items():
        kind, dtype, shared, micro = case
        label = f"{kind} {dtype}" + (
            f", shared prefix {'on' if shared else 'off'}, micro {micro}" if kind == "update" else ""
        )
        median = statistics.median(r["seconds"] for r in results)
        print(f"{label:<44} {median:>9.1f}  " + " / ".join(f"{r['seconds']:.1f}" for r in results))
        table.append({"case": label, "median_seconds": median, "runs": results})
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"torch_threads": torch.get_num_threads(), "cases": table}, indent=2))
    print(f"\nJSON: {args.out}")


if __name__ == "__main__":
    main()
