"""Quick algorithms for development: `FastAlgorithm` (what `Trainer.dev` accepts) and `Baseline`."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Literal

from agl.algorithm.base import Algorithm
from agl.types.core import Rollout, RolloutMode

__all__ = ["Baseline", "FastAlgorithm"]

logger = logging.getLogger(__name__)


class FastAlgorithm(Algorithm):
    """Marker base of algorithms cheap enough for `Trainer.dev()` runs."""


class Baseline(FastAlgorithm):
    """Runs every dataset item once per epoch (train items, then validation items) and logs what came back.

    At most `max_queue_length` rollouts wait in the queue at a time; each finished rollout's spans are logged (as
    `span_verbosity` says) and passed through the adapter.
    """

    def __init__(
        self,
        *,
        n_epochs: int = 1,
        train_split: float = 0.5,
        polling_interval: float = 5.0,
        max_queue_length: int = 4,
        span_verbosity: Literal["keys", "key_values", "none"] = "keys",
    ) -> None:
        super().__init__()
        if not 0.0 < train_split < 1.0:
            raise ValueError(f"train_split must be between 0 and 1 (exclusive), got {train_split}")
        if n_epochs < 1:
            raise ValueError(f"n_epochs must be at least 1, got {n_epochs}")
        if max_queue_length < 1:
            raise ValueError(f"max_queue_length must be at least 1, got {max_queue_length}")
        if polling_interval <= 0:
            raise ValueError(f"polling_interval must be positive, got {polling_interval}")
        if span_verbosity not in ("keys", "key_values", "none"):
            raise ValueError(f"span_verbosity must be 'keys', 'key_values' or 'none', got {span_verbosity!r}")
        self.n_epochs = n_epochs
        self.train_split = train_split
        self.polling_interval = polling_interval
        self.max_queue_length = max_queue_length
        self.span_verbosity = span_verbosity
        self.results: list[Rollout] = []

    async def run(self, train_dataset: Any = None, val_dataset: Any = None) -> None:
        """Enqueue each item of the datasets once per epoch and harvest the results."""
        if train_dataset is None and val_dataset is None:
            logger.error("Baseline.run() got no dataset: nothing to do")
            return
        store = self.get_store()
        initial = self.get_initial_resources()
        if initial is not None:
            await store.update_resources("default", initial)
        items: list[tuple[Any, RolloutMode]] = []
        splits: tuple[tuple[Any, RolloutMode], ...] = ((train_dataset, "train"), (val_dataset, "val"))
        for dataset, mode in splits:
            if dataset is not None:
                items.extend((dataset[i], mode) for i in range(len(dataset)))
        for epoch in range(self.n_epochs):
            harvests: list[asyncio.Task[None]] = []
            for task, mode in items:
                await self._wait_for_room()
                rollout = await store.enqueue_rollout(task, mode=mode)
                harvests.append(asyncio.create_task(self._harvest(rollout.rollout_id)))
            await asyncio.gather(*harvests)
            logger.info("Baseline epoch %d/%d done: %d rollouts", epoch + 1, self.n_epochs, len(harvests))

    async def _wait_for_room(self) -> None:
        store = self.get_store()
        delay = 0.01
        while True:
            waiting = await store.query_rollouts(status_in=["queuing", "requeuing"], limit=1)
            if waiting.total <= self.max_queue_length:
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.polling_interval)

    async def _harvest(self, rollout_id: str) -> None:
        store = self.get_store()
        while True:
            done = await store.wait_for_rollouts(rollout_ids=[rollout_id], timeout=self.polling_interval)
            if done:
                break
        rollout = done[0]
        self.results.append(rollout)
        attempts = await store.query_attempts(rollout_id)
        spans = await store.query_spans(rollout_id, "latest")
        logger.info(
            "Rollout %s %s after %d attempt(s), %d span(s)", rollout_id, rollout.status, len(attempts), len(spans)
        )
        for span in spans:
            if self.span_verbosity == "keys":
                logger.info("  span %s: %s", span.name, sorted(span.attributes))
            elif self.span_verbosity == "key_values":
                logger.info("  span %s: %s", span.name, span.attributes)
        try:
            adapted = self.get_adapter().adapt(list(spans))
            logger.info("Rollout %s adapted: %s", rollout_id, adapted)
        except ValueError:
            pass  # no adapter configured
        except Exception:
            logger.exception("The adapter failed on rollout %s", rollout_id)
