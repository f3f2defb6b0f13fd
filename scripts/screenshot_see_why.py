"""The pictures of docs/evaluate.md, docs/attributions.md, docs/probe.md and docs/report.md: the
shipped checkpoint as a newcomer sees it, on the shipped sample's dev split.

    python scripts/screenshot_see_why.py [--out docs/screenshots]

Starts `streamlit run app.py` on a free loopback port with an empty runs folder (so the shipped
checkpoint is the first choice everywhere), opens each page in Debian's Chromium and presses what
a user would: Evaluate, a mistake opened in the Playground, Explain on the Why tab, the attention
rollout, Run the probe. Then writes `mtbert report` for the same checkpoint and photographs it
from file://.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from streamlit_server import chromium, streamlit_app  # noqa: E402

SHIPPED = ROOT / "checkpoints" / "minilm-l6-heads"
SAMPLE = ROOT / "data" / "sample"


def idle(page) -> None:
    page.wait_for_timeout(400)
    page.wait_for_selector("[data-testid='stStatusWidget']", state="detached", timeout=180_000)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    def shot(page, name: str, at=None) -> None:
        page.mouse.move(5, 5)  # no tooltip over the picture
        if at is not None:
            at.scroll_into_view_if_needed()
        page.wait_for_timeout(800)
        page.screenshot(path=str(args.out / f"{name}.png"))
        print(f"wrote {args.out / name}.png")

    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "MTBERT_RUNS_DIR": str(Path(tmp) / "runs")}
        report = Path(tmp) / "report.html"
        # relative names: the report shows them as given
        subprocess.run([sys.executable, "-m", "mtbert", "report", "--checkpoint", str(SHIPPED.relative_to(ROOT)),
                        "--split", "dev", "--data-dir", str(SAMPLE.relative_to(ROOT)), "--out", str(report)],
                       check=True, cwd=ROOT)
        with streamlit_app(env, Path(tmp) / "streamlit.log") as url, chromium() as browser:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.goto(f"{url}/Evaluate")
            page.get_by_role("button", name="Evaluate", exact=True).click()
            page.get_by_role("heading", name="Results").wait_for(timeout=300_000)
            idle(page)
            page.get_by_role("tab", name="Paraphrase").click()
            page.wait_for_timeout(1500)
            # the paraphrase tab's threshold and ROC curves (after SST's four figures and its own three)
            shot(page, "evaluate-paraphrase", page.locator(".js-plotly-plot").nth(8))
            page.get_by_role("tab", name="SST").click()
            grid = page.locator("[data-testid='stDataFrame']").first
            grid.scroll_into_view_if_needed()
            box = grid.bounding_box()
            page.mouse.click(box["x"] + 14, box["y"] + 35 + 17)  # the first row's marker
            opener = page.get_by_role("button", name="Open in the Playground").first
            opener.wait_for(state="visible")
            page.wait_for_timeout(1500)
            shot(page, "evaluate-mistakes", grid)
            opener.click()
            page.get_by_role("heading", name="Playground", exact=True).wait_for(timeout=60_000)
            idle(page)
            page.get_by_role("tab", name="Why").click()
            page.get_by_role("button", name="Explain", exact=True).click()
            tokens = page.locator(".mtbert-attribution .mtbert-token")
            tokens.first.wait_for(timeout=120_000)
            shot(page, "why", page.get_by_role("button", name="Explain", exact=True))

            page.get_by_role("tab", name="Attention").click()
            page.get_by_label("Sentence A").fill("The movie was not bad at all.")
            page.get_by_role("button", name="Show attention").click()
            idle(page)
            page.wait_for_timeout(1500)
            shot(page, "attention-rollout", page.locator(".js-plotly-plot").nth(1))

            page.goto(f"{url}/Probe")
            page.get_by_role("button", name="Run the probe").click()
            page.locator(".js-plotly-plot").first.wait_for(timeout=300_000)
            idle(page)
            shot(page, "probe", page.locator(".js-plotly-plot").first)

            page.goto(report.as_uri())
            page.wait_for_function("document.querySelectorAll('.js-plotly-plot .main-svg').length > 0")
            page.wait_for_timeout(1000)
            page.screenshot(path=str(args.out / "report.png"))
            print(f"wrote {args.out / 'report'}.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
