"""Turning generated token ids into text, incrementally, with stop strings; and the exact bytes of a token.

`IncrementalText` decodes the whole completion after each token (cheap next to a model step) and releases only
text that can no longer change: a trailing incomplete UTF-8 character and any tail that could still grow into a
stop string are held back until the next token or the end. So streamed deltas concatenate to exactly the text of
the non-streamed completion. Special tokens (end-of-sequence, chat markers) are left out of the text, as vLLM and
OpenAI do; they stay in the token ids.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["IncrementalText", "TokenInfo"]

_REPLACEMENT = "\ufffd"


class IncrementalText:
    """The text of one completion, built token by token, cut at the first stop string."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stop: Sequence[str] = ()) -> None:
        self._tokenizer = tokenizer
        self._stop = tuple(s for s in stop if s)
        self._ids: list[int] = []
        self._emitted = 0
        self.text = ""
        """The text so far (final once `stopped` or `finish()` was called)."""
        self.stopped = False
        """Whether a stop string was found (the text ends just before it)."""

    def push(self, token_id: int) -> str:
        """Add a token; return the newly stable text (may be empty). Sets `stopped` when a stop string appears."""
        if self.stopped:
            return ""
        self._ids.append(token_id)
        text = str(self._tokenizer.decode(self._ids, skip_special_tokens=True))
        if self._stop:
            cut = self._find_stop(text)
            if cut is not None:
                self.stopped = True
                self.text = text[:cut]
                return self._release(len(self.text))
        self.text = text
        stable = len(text)
        while stable > self._emitted and text[stable - 1] == _REPLACEMENT:
            stable -= 1
        stable -= self._stop_prefix_len(text[:stable])
        return self._release(stable)

    def finish(self) -> str:
        """The end of the completion: release everything still held back."""
        return self._release(len(self.text))

    def _release(self, upto: int) -> str:
        if upto <= self._emitted:
            return ""
        delta = self.text[self._emitted : upto]
        self._emitted = upto
        return delta

    def _find_stop(self, text: str) -> int | None:
        start = max(0, self._emitted - max(len(s) for s in self._stop))
        found = [pos for pos in (text.find(s, start) for s in self._stop) if pos >= 0]
        return min(found) if found else None

    def _stop_prefix_len(self, text: str) -> int:
        """The length of the longest tail of `text` (not yet emitted) that begins some stop string."""
        best = 0
        for stop in self._stop:
            for size in range(min(len(stop) - 1, len(text) - self._emitted), best, -1):
                if text.endswith(stop[:size]):
                    best = size
                    break
        return best


class TokenInfo:
    """The display string and exact bytes of single tokens, cached per id.

    For byte-level BPE tokenizers (GPT-2 style, as SmolLM2 and Llama 3 use) the bytes are exact even when a token
    holds part of a multi-byte character; otherwise they are the UTF-8 encoding of the decoded token.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self._tokenizer = tokenizer
        self._byte_level = _is_byte_level(tokenizer)
        self._cache: dict[int, tuple[str, list[int]]] = {}

    def get(self, token_id: int) -> tuple[str, list[int]]:
        """`(text, bytes)` of one token; `text` is its decoded form, as OpenAI's `logprobs.content[].token`."""
        hit = self._cache.get(token_id)
        if hit is None:
            text = str(self._tokenizer.decode([token_id]))
            raw: bytes | None = None
            if self._byte_level:
                piece = self._tokenizer.convert_ids_to_tokens(token_id)
                if isinstance(piece, str):
                    raw = _byte_level_bytes(piece)
            if raw is None:
                raw = text.encode("utf-8", errors="replace")
            self._cache[token_id] = hit = (text, list(raw))
        return hit


def _is_byte_level(tokenizer: Any) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return False
    try:
        from tokenizers import decoders
    except ImportError:  # pragma: no cover - transformers requires tokenizers
        return False
    return isinstance(getattr(backend, "decoder", None), decoders.ByteLevel)


@functools.lru_cache(maxsize=1)
def _unicode_to_byte() -> dict[str, int]:
    """The inverse of the byte ↔ printable-character table byte-level BPE uses to spell raw bytes."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table: dict[str, int] = {chr(b): b for b in printable}
    extra = 0
    for b in range(256):
        if b not in printable:
            table[chr(256 + extra)] = b
            extra += 1
    return table


def _byte_level_bytes(piece: str) -> bytes | None:
    table = _unicode_to_byte()
    try:
        return bytes(table[ch] for ch in piece)
    except KeyError:  # a special token such as <|im_end|>, spelled literally
        return None
