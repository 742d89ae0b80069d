"""Watch `agl demo` through its dashboard: the reward per weights version as the store sees it while GRPO trains.

    python bench/demo_dashboard.py [--every 20] [--out bench/results/demo_dashboard.json]
                                   [--screenshot docs/dashboard/demo.png] [-- agl demo options...]

Runs `agl demo` (options after `--` go to it), reads the dashboard URL it prints, then asks the dashboard's
overview route every `--every` seconds while the demo trains, and saves (before the demo's store stops) a screenshot
of the dashboard's overview page in Debian's Chromium each time a new weights version has rewards (the last one
taken is kept). Writes every sample (time, rollouts finished, reward per
resources version and mode) as JSON and prints the last one as a table.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

_URL = re.compile(r"dashboard: (http://\S+/)")


def _overview(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + "v1/agl/dashboard/overview", timeout=10) as answer:
        return dict(json.loads(answer.read()))


def _screenshot(url: str, path: Path) -> None:
    from playwright.sync_api import sync_playwright

    from tests.dashboard.conftest import launch_chromium

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(url + "#/")
            page.wait_for_selector("[data-testid=reward-by-version]", timeout=20_000)
            time.sleep(2.5)  # one more poll, so the charts show the latest points
            path.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(path))
        finally:
            browser.close()


def main(argv: list[str] | None = None) -> int:
    """Run the demo, sample its dashboard, save the samples and a screenshot; returns the demo's exit code."""
    args_in = sys.argv[1:] if argv is None else argv
    demo_args: list[str] = []
    if "--" in args_in:
        cut = args_in.index("--")
        args_in, demo_args = args_in[:cut], args_in[cut + 1 :]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--every", type=float, default=20.0, help="seconds between overview samples")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "demo_dashboard.json"))
    parser.add_argument("--screenshot", default=None, help="where to save the overview page (PNG); none by default")
    args = parser.parse_args(args_in)

    demo = subprocess.Popen(
        [sys.executable, "-m", "agl.cli", "demo", *demo_args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )
    url: list[str] = []
    lines: list[str] = []

    def read() -> None:
        assert demo.stdout is not None
        for line in demo.stdout:
            lines.append(line)
            sys.stdout.write(line)
            found = _URL.search(line)
            if found and not url:
                url.append(found.group(1))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    samples: list[dict[str, Any]] = []
    shot_versions = 0
    try:
        while demo.poll() is None:
            time.sleep(args.every)
            if not url:
                continue
            try:
                overview = _overview(url[0])
            except OSError:
                continue  # the demo's store is not up yet, or already stopped
            samples.append(
                {
                    "time": overview["now"],
                    "finished": sum(overview["rollouts"]["by_status"][s] for s in ("succeeded", "failed", "cancelled")),
                    "by_version": overview["reward"]["by_version"],
                }
            )
            # A new picture for each new weights version: the last one taken shows the run nearest its end.
            versions = len(overview["reward"]["by_version"])
            if args.screenshot and versions > shot_versions:
                try:
                    _screenshot(url[0], Path(args.screenshot))
                    shot_versions = versions
                except Exception as exc:  # the store may stop mid-way; the previous picture stays
                    print(f"screenshot failed: {exc!r}", file=sys.stderr)
    finally:
        if demo.poll() is None:
            demo.terminate()
        code = demo.wait()
        reader.join(timeout=5)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"demo_args": demo_args, "url": url[:1], "samples": samples}, indent=1))
    if samples:
        print("\nreward per weights version, as the dashboard showed it last:")
        print(f"{'resources':<24}{'mode':<8}{'mean':>8}{'count':>8}")
        for row in samples[-1]["by_version"]:
            for mode, part in sorted(row["modes"].items()):
                print(f"{row['resources_id']!s:<24}{mode:<8}{part['mean']:>8.3f}{part['count']:>8}")
    print(f"\n{len(samples)} samples; wrote {out}")
    return code


if __name__ == "__main__":
    sys.exit(main())
