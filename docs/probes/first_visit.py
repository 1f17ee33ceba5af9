"""A learner's first visit: the page from opening to a usable Run button, with an empty cache.

    python docs/probes/first_visit.py

Starts `streamlit run viz/app.py` with MINISPEC_CACHE and NUMBA_CACHE_DIR in new empty
folders (no converted weights, no compiled kernels: a fresh clone's first start), opens the
page in headless Chromium and prints what the loading bar says, polled every second, then the
seconds until the model has loaded (the page's first view) and until a first Run with the
defaults shows its first step. Not a test: it asserts nothing.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from test_app_browser import CHROMIUM, CHROMIUM_ARGS, settle, step_heading, streamlit_app  # noqa: E402


def main() -> None:
    from playwright.sync_api import sync_playwright

    empty = Path(tempfile.mkdtemp(prefix="minispec-first-visit-"))
    os.environ["MINISPEC_CACHE"] = str(empty / "weights")
    os.environ["NUMBA_CACHE_DIR"] = str(empty / "numba")
    with streamlit_app("gemma", ROOT, empty / "streamlit.log") as port, sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        t0 = time.perf_counter()
        page.goto(f"http://127.0.0.1:{port}")
        run = page.get_by_role("button", name="Run", exact=True)
        loaded = page.get_by_test_id("stAlertContentInfo").filter(has_text="Pick a prompt")
        last = None
        while not loaded.is_visible():  # the page's first view, once the model has loaded
            bar = page.locator("[data-testid='stProgress']")
            text = bar.first.inner_text().strip() if bar.count() else ""
            if text and text != last:
                print(f"{time.perf_counter() - t0:6.1f} s  {text}", flush=True)
                last = text
            page.wait_for_timeout(1000)
        ready = time.perf_counter() - t0
        settle(page, 600_000)
        run.click()
        step_heading(page).wait_for(timeout=600_000)
        first_step = time.perf_counter() - t0
        browser.close()
    print(f"model loaded after {ready:.0f} s; the first step shown after {first_step:.0f} s")


if __name__ == "__main__":
    main()
