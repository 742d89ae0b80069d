"""`GenerationEngine`: one thread that owns the model, gathers concurrent requests into batches and generates.

How a batch runs:

- Requests wait in a queue. The engine takes the first, then keeps gathering for `batch_window` seconds (or until
  `max_batch_size` sequences are in hand); all `n` samples of a request always go into the same batch.
- Prompts are left-padded into one tensor; one forward pass fills the KV cache (the "prefill"), then each step
  feeds the newest token of every unfinished sequence. A prefix that every prompt of the batch shares (a system
  prompt, a tool list, few-shot examples; all `n` samples of one request) is prefilled once and its keys and values
  copied to every row, so the prefill costs the shared part once plus each prompt's own tail. Sequences that finish are dropped from the batch (and from
  the cache), so a long completion does not make short ones pay.
- Each sequence has its own seeded random generator, so a sample depends only on its prompt, settings and seed —
  not on which other requests shared the batch, nor on whether the caller streams.
- Batches are static: a request that arrives while a batch runs waits for the next batch.

Weights: `update_weights()` waits for the running batch to end, copies the new weights into the model in place and
sets the version; requests already in a batch finish on the old weights, queued ones run on the new weights, and
none is dropped. Every finished sequence reports the weights version it was generated with.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agl.llm.detokenize import IncrementalText
from agl.llm.device import compute_context, model_device
from agl.llm.sampling import SamplingParams, make_generator, sample_token

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "EngineStats",
    "GenerationEngine",
    "GenerationRequest",
    "SequenceEvent",
    "cache_keyword",
    "left_padded_batch",
    "shared_prefix_length",
]

MIN_SHARED_PREFIX = 8
"""Shorter common prefixes are not worth a separate forward pass."""

logger = logging.getLogger(__name__)


@dataclass
class SequenceEvent:
    """What happened to one sequence of a request in one step.

    `token_ids`/`logprobs`/`top_logprobs` are the tokens added in this step (usually one); `text` is the newly stable
    text. `finish_reason` is set on the last event of the sequence (`"stop"`, `"length"` or `"error"`).
    """

    index: int
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    weights_version: str | None = None
    error: str | None = None


EventSink = Callable[[list[SequenceEvent]], None]


@dataclass(eq=False)
class GenerationRequest:
    """One prompt to complete `n` times; events are delivered to `sink` from the engine thread."""

    prompt_ids: list[int]
    params: SamplingParams
    sink: EventSink
    n: int = 1
    cancelled: bool = False
    """Set by the caller (e.g. the client went away) to stop generating for this request."""


@dataclass
class EngineStats:
    """Counters since the engine started."""

    batches: int = 0
    requests: int = 0
    sequences: int = 0
    prompt_tokens: int = 0
    shared_prompt_tokens: int = 0
    """Prompt tokens not prefilled because the batch's shared prefix was computed once for all its rows."""
    generated_tokens: int = 0
    generate_seconds: float = 0.0
    weight_updates: int = 0
    batch_sizes: deque[int] = field(default_factory=lambda: deque(maxlen=1000))
    """Sequences per batch, most recent last (the last 1000 batches)."""

    def as_dict(self) -> dict[str, Any]:
        """The counters as plain JSON values."""
        return {
            "batches": self.batches,
            "requests": self.requests,
            "sequences": self.sequences,
            "prompt_tokens": self.prompt_tokens,
            "shared_prompt_tokens": self.shared_prompt_tokens,
            "generated_tokens": self.generated_tokens,
            "generate_seconds": round(self.generate_seconds, 3),
            "weight_updates": self.weight_updates,
            "recent_batch_sizes": list(self.batch_sizes)[-20:],
        }


class _Sequence:
    """The state of one sample while its batch runs."""

    __slots__ = ("generated", "generator", "index", "request", "text")

    def __init__(self, request: GenerationRequest, index: int, tokenizer: PreTrainedTokenizerBase) -> None:
        self.request = request
        self.index = index
        seed = request.params.seed
        self.generator = make_generator(None if seed is None else seed + index)
        self.text = IncrementalText(tokenizer, request.params.stop)
        self.generated = 0


class GenerationEngine:
    """Batched generation for one Hugging Face causal LM on its device, CPU or CUDA (see the module docstring).

    Args:
        model: the model; the engine only reads it, except in `update_weights()`.
        tokenizer: its tokenizer (for end-of-sequence ids, padding and stop strings).
        max_batch_size: the most sequences in one batch (a single request with a larger `n` still runs whole).
        batch_window: how long to gather requests after the first one arrives, in seconds.
        weights_version: the version reported before any `update_weights()`.
        compute_dtype: run the matrix products in this dtype (torch autocast; the weights keep theirs); `None`: the
            model's own dtype.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        max_batch_size: int = 32,
        batch_window: float = 0.02,
        weights_version: str = "0",
        compute_dtype: torch.dtype | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        if batch_window < 0:
            raise ValueError(f"batch_window must be >= 0 seconds, got {batch_window}")
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.batch_window = batch_window
        self.weights_version = weights_version
        self.compute_dtype = compute_dtype
        self.stats = EngineStats()
        self.eos_token_ids = _eos_token_ids(model, tokenizer)
        self.pad_token_id = _pad_token_id(tokenizer, self.eos_token_ids)
        self.max_context = _max_context(model)
        self._cache_kwarg = cache_keyword(model)
        self._keeps_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
        self._queue: queue.Queue[GenerationRequest | None] = queue.Queue()
        self._held: GenerationRequest | None = None
        self._state = threading.Condition()
        self._busy = False
        self._waiting_exclusive = 0
        self._stopping = False
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the engine thread (idempotent)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="agl-llm-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the engine thread: the running batch ends at its next step; its unfinished sequences and the queued
        requests end with an error event (`finish_reason="error"`)."""
        thread = self._thread
        if thread is None:
            return
        self._stopping = True
        self._queue.put(None)
        thread.join(timeout)
        self._thread = None
        self._fail_queued("the model server is shutting down")

    @property
    def running(self) -> bool:
        """Whether the engine thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def submit(self, request: GenerationRequest) -> None:
        """Queue a request; its events arrive at `request.sink` from the engine thread."""
        if self._stopping or not self.running:
            raise RuntimeError("the generation engine is not running")
        if request.n < 1:
            raise ValueError(f"n must be at least 1, got {request.n}")
        self._queue.put(request)

    # -- weights ---------------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the model between batches: no batch starts until the block ends (the running one finishes first).

        Use it to change the served model in place (e.g. an optimizer step on the very model the server serves).
        """
        with self._state:
            self._waiting_exclusive += 1
            try:
                while self._busy:
                    self._state.wait()
                yield
            finally:
                self._waiting_exclusive -= 1
                self._state.notify_all()

    def update_weights(
        self, source: Mapping[str, torch.Tensor] | PreTrainedModel | torch.nn.Module, version: str
    ) -> None:
        """Copy new weights into the served model between batches and report them as `version`.

        `source` is a state dict or a model of the same architecture; passing the served model itself only sets the
        version (its weights were changed in place, e.g. under `exclusive()`). Raises `ValueError` when the
        weights do not fit the model (missing or unexpected names, wrong shapes); the model is then unchanged
        unless the error came from a shape mismatch part-way through.
        """
        import torch

        state: Mapping[str, torch.Tensor] | None
        if source is self.model:
            state = None
        elif isinstance(source, torch.nn.Module):
            state = source.state_dict()
        else:
            state = source
        with self.exclusive():
            if state is not None:
                _load_weights(self.model, state)
            self.weights_version = str(version)
            self.stats.weight_updates += 1
        logger.info("serving weights version %s", version)

    # -- the engine thread -----------------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping:
            batch = self._gather()
            if batch is None:
                break
            if not batch:
                continue
            with self._state:
                while self._waiting_exclusive:
                    self._state.wait()
                self._busy = True
            try:
                self._generate(batch)
            except Exception as exc:
                logger.exception("generation failed for a batch of %d request(s)", len(batch))
                message = f"generation failed: {type(exc).__name__}: {exc}"
                for request in batch:
                    _deliver(
                        request,
                        [SequenceEvent(index=i, finish_reason="error", error=message) for i in range(request.n)],
                    )
            finally:
                with self._state:
                    self._busy = False
                    self._state.notify_all()

    def _gather(self) -> list[GenerationRequest] | None:
        """The next batch of requests (empty when there is none yet; `None` when stopping)."""
        first = self._held
        self._held = None
        if first is None:
            try:
                first = self._queue.get(timeout=0.5)
            except queue.Empty:
                return []
            if first is None:
                return None
        batch = [first]
        size = first.n
        deadline = time.monotonic() + self.batch_window
        while size < self.max_batch_size:
            remaining = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self._stopping = True
                break
            if size + item.n > self.max_batch_size:
                self._held = item  # it opens the next batch, keeping its samples together
                break
            batch.append(item)
            size += item.n
        return [request for request in batch if not request.cancelled]

    def _fail_queued(self, message: str) -> None:
        pending = [self._held] if self._held is not None else []
        self._held = None
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                pending.append(item)
        for request in pending:
            _deliver(request, [SequenceEvent(index=i, finish_reason="error", error=message) for i in range(request.n)])

    def _generate(self, batch: list[GenerationRequest]) -> None:
        """Run one batch to completion, delivering events after every step."""
        import torch
        from transformers.cache_utils import DynamicCache

        started = time.perf_counter()
        version = self.weights_version
        sequences = [_Sequence(request, i, self.tokenizer) for request in batch for i in range(request.n)]
        prompts = [seq.request.prompt_ids for seq in sequences]
        device = model_device(self.model)
        cache = DynamicCache(config=self.model.config)
        # Every row keeps at least one token of its own, so each row's first logits come from the batched pass.
        shared = min(shared_prefix_length(prompts), min(len(p) for p in prompts) - 1)
        if len(prompts) < 2 or shared < MIN_SHARED_PREFIX:
            shared = 0
        input_ids, attention, positions = left_padded_batch([p[shared:] for p in prompts], self.pad_token_id, device)
        self.stats.batches += 1
        self.stats.requests += len(batch)
        self.stats.sequences += len(sequences)
        self.stats.prompt_tokens += sum(len(p) for p in prompts)
        self.stats.shared_prompt_tokens += shared * (len(prompts) - 1)
        self.stats.batch_sizes.append(len(sequences))

        live = sequences  # row i of the tensors below belongs to live[i]
        with torch.no_grad(), compute_context(self.compute_dtype, device):
            if shared:
                prefix = torch.tensor([list(prompts[0][:shared])], dtype=torch.long, device=device)
                self._forward(prefix, torch.ones_like(prefix), torch.arange(shared, device=device)[None], cache)
                cache.batch_repeat_interleave(len(prompts))
                # Rows are [shared prefix][left padding][own tail]: the padding is masked out and the tail's
                # positions continue from the prefix.
                attention = torch.cat([attention.new_ones((len(prompts), shared)), attention], dim=-1)
                positions = positions + shared
            logits = self._forward(input_ids, attention, positions, cache)
            while True:
                next_ids, finished = self._step(live, logits, version)
                keep = [row for row, done in enumerate(finished) if not done]
                if not keep:
                    break
                if self._stopping:
                    self._abort([live[row] for row in keep], "the model server is shutting down")
                    break
                if len(keep) < len(live):
                    index = torch.tensor(keep, dtype=torch.long, device=device)
                    cache.batch_select_indices(index)
                    attention = attention[index]
                    positions = positions[index]
                    live = [live[row] for row in keep]
                    next_ids = [next_ids[row] for row in keep]
                attention = torch.cat([attention, attention.new_ones((len(live), 1))], dim=-1)
                positions = positions[:, -1:] + 1
                tokens = torch.tensor(next_ids, dtype=torch.long, device=device).unsqueeze(-1)
                logits = self._forward(tokens, attention, positions, cache)
        self.stats.generate_seconds += time.perf_counter() - started

    def _abort(self, sequences: Sequence[_Sequence], message: str) -> None:
        by_request: dict[int, tuple[GenerationRequest, list[SequenceEvent]]] = {}
        for seq in sequences:
            entry = by_request.setdefault(id(seq.request), (seq.request, []))
            entry[1].append(SequenceEvent(index=seq.index, finish_reason="error", error=message))
        for request, events in by_request.values():
            _deliver(request, events)

    def _forward(
        self, input_ids: torch.Tensor, attention: torch.Tensor, positions: torch.Tensor, cache: Any
    ) -> torch.Tensor:
        """The fp32 logits of the last position of every row, on CPU (where sampling runs; see `_step`)."""
        kwargs: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": attention,
            "position_ids": positions,
            "use_cache": True,
            self._cache_kwarg: cache,
        }
        if self._keeps_logits:
            kwargs["logits_to_keep"] = 1
        output = self.model(**kwargs)
        # One copy per step to the CPU: sampling uses each sequence's seeded CPU generator, so a seed picks the same
        # token for the same logits on any device.
        logits: torch.Tensor = output.logits[:, -1, :].float().cpu()
        return logits

    def _step(self, live: Sequence[_Sequence], logits: torch.Tensor, version: str) -> tuple[list[int], list[bool]]:
        """Sample one token for every live sequence, deliver the events; return the tokens and which finished."""
        import torch

        logprobs = torch.log_softmax(logits, dim=-1)
        next_ids: list[int] = []
        finished: list[bool] = []
        events: dict[int, list[SequenceEvent]] = {}
        for row, seq in enumerate(live):
            request, params = seq.request, seq.request.params
            if request.cancelled:
                next_ids.append(self.pad_token_id)
                finished.append(True)
                continue
            token = sample_token(logits[row], params, seq.generator)
            seq.generated += 1
            event = SequenceEvent(index=seq.index, token_ids=[token], logprobs=[float(logprobs[row, token].item())])
            if params.top_logprobs > 0:
                top = torch.topk(logprobs[row], params.top_logprobs)
                event.top_logprobs.append(
                    [(int(i), float(v)) for i, v in zip(top.indices.tolist(), top.values.tolist(), strict=True)]
                )
            event.text = seq.text.push(token)
            reason: str | None = None
            if seq.text.stopped or token in params.stop_token_ids:
                reason = "stop"
            elif token in self.eos_token_ids and not params.ignore_eos:
                reason = "stop"
            elif seq.generated >= params.max_tokens or len(request.prompt_ids) + seq.generated >= self.max_context:
                reason = "length"
            if reason is not None:
                event.text += seq.text.finish()
                event.finish_reason = reason
                event.weights_version = version
            self.stats.generated_tokens += 1
            events.setdefault(id(request), []).append(event)
            next_ids.append(token)
            finished.append(reason is not None)
        for seq in live:
            batch_events = events.pop(id(seq.request), None)
            if batch_events:
                _deliver(seq.request, batch_events)
        return next_ids, finished


def left_padded_batch(
    prompts: Sequence[Sequence[int]], pad_token_id: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`(input_ids, attention_mask, position_ids)` for prompts left-padded to one width, on `device`.

    Built on the CPU and moved in one copy per tensor (not one small copy per prompt).
    """
    import torch

    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long, device="cpu")
    attention = torch.zeros((len(prompts), width), dtype=torch.long, device="cpu")
    for row, prompt in enumerate(prompts):
        input_ids[row, width - len(prompt) :] = torch.tensor(list(prompt), dtype=torch.long, device="cpu")
        attention[row, width - len(prompt) :] = 1
    positions = (attention.cumsum(dim=-1) - 1).clamp(min=0)
    return input_ids.to(device), attention.to(device), positions.to(device)


def shared_prefix_length(sequences: Sequence[Sequence[int]]) -> int:
    """How many leading tokens every sequence has in common (0 for no sequences)."""
    if not sequences:
        return 0
    first = sequences[0]
    length = min(len(s) for s in sequences)
    for other in sequences[1:]:
        i = 0
        while i < length and other[i] == first[i]:
            i += 1
        length = i
        if not length:
            break
    return length


def cache_keyword(model: Any) -> str:
    """The name under which `model.forward` takes a KV cache (`cache` in newer transformers, else `past_key_values`)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _deliver(request: GenerationRequest, events: list[SequenceEvent]) -> None:
    try:
        request.sink(events)
    except Exception:  # a broken sink must not stop the batch
        logger.exception("delivering generation events failed")


def _load_weights(model: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copy `state` into `model`'s tensors in place; tied parameters may be given once."""
    import torch

    own = model.state_dict(keep_vars=True)
    unexpected = sorted(set(state) - set(own))
    if unexpected:
        raise ValueError(f"the new weights have names the model does not: {', '.join(unexpected[:5])}")
    given_storage = {own[name].data_ptr() for name in state}
    missing = sorted(name for name in own if name not in state and own[name].data_ptr() not in given_storage)
    if missing:
        raise ValueError(f"the new weights lack {len(missing)} tensor(s) of the model: {', '.join(missing[:5])}")
    for name, tensor in state.items():
        if tuple(own[name].shape) != tuple(tensor.shape):
            raise ValueError(
                f"the new weight {name!r} has shape {tuple(tensor.shape)}, the model's has {tuple(own[name].shape)}"
            )
    with torch.no_grad():
        for name, tensor in state.items():
            own[name].copy_(tensor)


def _eos_token_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), getattr(model, "config", None), tokenizer):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return frozenset(ids)


def _pad_token_id(tokenizer: Any, eos: frozenset[int]) -> int:
    pad = getattr(tokenizer, "pad_token_id", None)
    if isinstance(pad, int):
        return pad
    return min(eos) if eos else 0


def _max_context(model: Any) -> int:
    value = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return int(value) if isinstance(value, int) and value > 0 else 1 << 30
