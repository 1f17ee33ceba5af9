"""docs/replay.png: the replay page of a real run, as a reader of the README sees it.

    python docs/probes/replay_screenshot.py [OUT.png]

Gemma 3 270M with the MTP drafter, k = 4, temperature 0.7, top-p 0.95, seed 0, 32 new tokens
on the benchmark's code-edit prompt (`minispec.measure.PROMPTS`): `minispec generate --trace`,
then `minispec replay --html`, then the page opened from disk in headless Chromium (Debian's, or
MINISPEC_CHROMIUM), four presses of the right arrow (step 5) and a full-page screenshot, 1200
pixels wide.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from test_app_browser import CHROMIUM, CHROMIUM_ARGS  # noqa: E402

from minispec.cli import main  # noqa: E402
from minispec.measure import PROMPTS  # noqa: E402


def screenshot(out: Path) -> None:
    from playwright.sync_api import sync_playwright

    tmp = Path(tempfile.mkdtemp())
    trace, page_file = tmp / "trace.json", tmp / "replay.html"
    settings = ["--drafter", "mtp", "--k", "4", "--max-new-tokens", "32", "--temperature", "0.7"]
    settings += ["--top-p", "0.95", "--seed", "0", "--trace", str(trace)]
    if main(["generate", "--prompt", PROMPTS["code-edit"], *settings]) != 0:
        raise SystemExit("generate failed")
    if main(["replay", str(trace), "--html", str(page_file)]) != 0:
        raise SystemExit("replay failed")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(page_file.as_uri())
        for _ in range(4):
            page.keyboard.press("ArrowRight")
        page.screenshot(path=str(out), full_page=True)
        browser.close()
    print(f"wrote {out}")


if __name__ == "__main__":
    screenshot(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "replay.png")
