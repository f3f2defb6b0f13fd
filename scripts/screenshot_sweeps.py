"""The picture of docs/sweeps.md: the Sweeps page showing a finished sweep.

    python scripts/screenshot_sweeps.py --sweeps SWEEPS_FOLDER

Starts `streamlit run app.py` on a free loopback port with MTBERT_SWEEPS_DIR=SWEEPS_FOLDER (the page
shows its newest sweep) and photographs the results: the table, the table against `sum`, the bars.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from streamlit_server import chromium, streamlit_app  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sweeps", type=Path, required=True, help="a folder holding sweep folders")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots" / "sweeps.png")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "MTBERT_RUNS_DIR": str(Path(tmp) / "runs"), "MTBERT_SWEEPS_DIR": str(args.sweeps)}
        with streamlit_app(env, Path(tmp) / "streamlit.log") as url, chromium() as browser:
            page = browser.new_page(viewport={"width": 1400, "height": 1500})
            page.goto(f"{url}/Sweeps")
            page.get_by_text("Against gradient_method=sum").wait_for(timeout=180_000)
            page.wait_for_timeout(3000)
            page.get_by_text("Results", exact=False).first.scroll_into_view_if_needed()
            page.mouse.move(5, 5)
            page.wait_for_timeout(800)
            page.screenshot(path=str(args.out))
            print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
