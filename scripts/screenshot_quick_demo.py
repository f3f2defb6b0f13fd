"""The README's picture of the Train page: the quick CPU demo, started from the page as a newcomer
would, photographed while it trains (its live loss, dev and PCGrad charts).

    python scripts/screenshot_quick_demo.py [--at-step 150] [--out docs/screenshots/quick-demo-training.png]

Starts `streamlit run app.py` on a free loopback port with a throw-away runs folder, opens the Train
page in Debian's Chromium, presses "Start training" with the form as it opens (the quick CPU demo on
the shipped sample), waits for the run to reach --at-step, takes the screenshot, then stops the run.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from streamlit_server import chromium, streamlit_app  # noqa: E402


def run_step(runs_dir: Path) -> int:
    from mtbert.runfolder import STATUS, read_status

    status = [read_status(p.parent) or {} for p in runs_dir.glob(f"*/{STATUS}")]
    return max((s.get("step") or 0 for s in status), default=0)


def stop(runs_dir: Path) -> None:
    """Stop the demo run (it is its own process) and wait until it has saved its state."""
    os.environ["MTBERT_RUNS_DIR"] = str(runs_dir)
    from mtbert.studio import runs

    active = runs.active_run()
    if active is None:
        return
    runs.stop_run(active)
    deadline = time.time() + 120
    while runs.is_live(runs.read_status(active)) and time.time() < deadline:
        time.sleep(1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--at-step", type=int, default=150)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots" / "quick-demo-training.png")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        runs_dir = Path(tmp) / "runs"
        env = {**os.environ, "MTBERT_RUNS_DIR": str(runs_dir)}
        with streamlit_app(env, Path(tmp) / "streamlit.log") as url, chromium() as browser:
            page = browser.new_page(viewport={"width": 1400, "height": 1300})
            page.goto(f"{url}/Train")
            page.get_by_role("button", name="Start training").wait_for(timeout=120_000)
            page.get_by_role("button", name="Start training").click()
            deadline = time.time() + 600
            while run_step(runs_dir) < args.at_step:
                if time.time() > deadline:
                    raise SystemExit(f"the run did not reach step {args.at_step} in 10 minutes")
                time.sleep(2)
            charts = page.locator(".js-plotly-plot")
            charts.first.scroll_into_view_if_needed()
            page.get_by_role("heading", name="3 · Run", exact=False).scroll_into_view_if_needed()
            page.wait_for_timeout(2500)  # one more refresh of the live charts
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.out))
            stop(runs_dir)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
