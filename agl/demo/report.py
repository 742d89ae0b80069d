"""What the demo shows: a progress line per step, a before/after table, a reward-curve PNG and a JSON log."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO

from agl.algorithm.grpo import StepLog

__all__ = ["Progress", "before_after_table", "write_json", "write_png"]


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


class Progress:
    """A progress bar over training steps: step, reward, held-out success, elapsed and ETA.

    On a terminal the bar redraws in place; otherwise (CI logs) each step prints one line. Each evaluation redraws
    the bar with its score, so the last value shown is the last evaluation's, which the table reports as final.
    """

    def __init__(
        self, total_steps: int, stream: TextIO | None = None, width: int = 24, resumed_from: str | None = None
    ) -> None:
        self.total = total_steps
        self.resumed_from = resumed_from
        self.stream = stream or sys.stderr
        self.width = width
        self.started = time.monotonic()
        self.last_eval: float | None = None
        self.step_seconds: list[float] = []
        self.tty = self.stream.isatty()
        self.last_line: tuple[int, float] | None = None
        self.open_line = False

    def __call__(self, log: StepLog) -> None:
        if log.kind == "eval":
            self.last_eval = log.reward_mean
            if log.extra.get("final"):
                self._print(
                    f"final model: weights {log.weights_version} (the best held-out score, restored), "
                    f"held-out success {log.reward_mean:.1%}"
                )
            elif self.last_line is None:
                when = "before training" if self.resumed_from is None else f"of the resumed {self.resumed_from}"
                self._print(f"held-out success {when}: {log.reward_mean:.1%} ({log.samples} problems)")
            else:
                self._draw(self.last_line[0], self.last_line[1])  # the same step, with the new held-out score
            return
        self.step_seconds.append(log.seconds)
        self.last_line = (log.step, log.reward_mean)
        self._draw(log.step, log.reward_mean)

    def _draw(self, step: int, reward: float) -> None:
        elapsed = time.monotonic() - self.started
        recent = self.step_seconds[-5:]
        eta = sum(recent) / len(recent) * (self.total - step) if recent else 0.0  # evaluations excluded
        done = int(self.width * min(step, self.total) / self.total)
        bar = "█" * done + "·" * (self.width - done)
        held = f" | held-out {self.last_eval:.1%}" if self.last_eval is not None else ""
        line = (
            f"step {step:>3}/{self.total} |{bar}| reward {reward:.2f}{held} "
            f"| {_clock(elapsed)} elapsed, ETA {_clock(eta)}"
        )
        if self.tty:
            self.stream.write("\r" + line)
            self.stream.flush()
            self.open_line = True
        else:
            self._print(line)

    def close(self) -> None:
        """End the bar's line on a terminal (call once training is over)."""
        if self.tty and self.open_line:
            self.stream.write("\n")
            self.stream.flush()
            self.open_line = False

    def _print(self, line: str) -> None:
        if self.tty and self.open_line:
            self.stream.write("\n")
            self.open_line = False
        self.stream.write(line + "\n")
        self.stream.flush()


def before_after_table(history: Sequence[StepLog]) -> str:
    """A table of held-out success before training, at its best and at the end (the weights the run ended on)."""
    evals = [h for h in history if h.kind == "eval"]
    if not evals:
        return "(no evaluation was run)"
    before, after = evals[0], evals[-1]
    best = max(evals, key=lambda h: h.reward_mean)  # the first of equal scores: the one training kept
    rows = [
        ("", "before", "best", "final", "change"),
        (
            "held-out success",
            f"{before.reward_mean:.1%}",
            f"{best.reward_mean:.1%}",
            f"{after.reward_mean:.1%}",
            f"{(after.reward_mean - before.reward_mean) * 100:+.1f} pts",
        ),
        ("weights", before.weights_version, best.weights_version, after.weights_version, ""),
        ("problems", str(before.samples), str(best.samples), str(after.samples), ""),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_json(path: Path, history: Sequence[StepLog], settings: dict[str, Any]) -> None:
    """Every step and evaluation, with the settings of the run."""
    path.write_text(json.dumps({"settings": settings, "history": [asdict(h) for h in history]}, indent=2))


def write_png(path: Path, history: Sequence[StepLog], title: str) -> None:
    """The reward curve (training reward per step, held-out success at each evaluation)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [h for h in history if h.kind == "train"]
    evals = [h for h in history if h.kind == "eval" and not h.extra.get("final")]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    ax.plot([h.step for h in train], [h.reward_mean for h in train], marker=".", label="training reward (sampled)")
    ax.plot([h.step for h in evals], [h.reward_mean for h in evals], marker="o", label="held-out success (greedy)")
    final = [h for h in history if h.kind == "eval" and h.extra.get("final")]
    if final:
        label = f"final model (weights {final[-1].weights_version})"
        ax.plot([final[-1].step], [final[-1].reward_mean], marker="*", markersize=14, linestyle="", label=label)
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("mean reward")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
