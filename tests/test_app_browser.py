"""The app as `streamlit run viz/app.py` serves it: on loopback only, and in a real browser.

The server test needs no browser: viz/.streamlit/config.toml must keep the app on 127.0.0.1
(only this machine can drive it) unless `--server.address` says otherwise. The browser test runs
Gemma 3 270M in Debian's Chromium (`apt-get install chromium`, which the README's test command
does; Playwright's own browser download does not work offline), or the browser that
MINISPEC_CHROMIUM names. The test runs a short generation, steps twice, plays, checks what the page
shows and saves screenshots under its tmp dir. Set MINISPEC_APP_SCREENSHOT=path.png to keep the
step screenshot too (docs/app.png is made this way).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path(
    os.environ.get("MINISPEC_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
)
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PROMPT = "Copy the list.\nList: red, green, blue, yellow, black, white.\nCopy: red, green,"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with status {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise TimeoutError(f"streamlit did not listen on port {port} within {timeout} s")


@contextmanager
def streamlit_app(model: str, cwd: Path, log: Path, *flags: str) -> Iterator[int]:
    """`streamlit run viz/app.py` from `cwd` on a free port: the app's own config, then flags."""
    port = free_port()
    env = {**os.environ, "MINISPEC_APP_MODEL": model}
    cmd = [sys.executable, "-m", "streamlit", "run", str(ROOT / "viz" / "app.py")]
    cmd += ["--server.headless", "true", "--server.port", str(port), *flags]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_for_port(port, proc)
            yield port
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def listening_on(port: int) -> list[str]:
    """Where sockets listen on `port`, as Linux's /proc/net/tcp and tcp6 write it."""
    rows = []
    for table in ("tcp", "tcp6"):
        for line in (Path("/proc/net") / table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, port_hex = local.split(":")
            if state == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
                rows.append(f"{table} {address}")
    return rows


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux's /proc/net/tcp")
def test_the_app_listens_on_loopback_unless_told(tmp_path: Path) -> None:
    # Started from another directory: the config next to the script is what keeps it local.
    log = tmp_path / "streamlit.log"
    with streamlit_app("tiny", tmp_path, log) as port:
        assert listening_on(port) == ["tcp 0100007F"], log.read_text()  # 127.0.0.1, no IPv6
    with streamlit_app("tiny", tmp_path, log, "--server.address", "0.0.0.0") as port:
        assert listening_on(port) == ["tcp 00000000"], log.read_text()  # every interface


@pytest.fixture
def app_url(real_checkpoint: Path, tmp_path: Path) -> Iterator[str]:
    """The app on the real model (MINISPEC_CACHE: see real_checkpoint), from the repo root."""
    with streamlit_app("gemma", ROOT, tmp_path / "streamlit.log") as port:
        yield f"http://127.0.0.1:{port}"


def settle(page, timeout: float = 180_000) -> None:  # noqa: ANN001
    """Wait until Streamlit has finished rerunning ("Running..." gone)."""
    page.wait_for_timeout(300)
    page.locator("[data-testid='stStatusWidget']").wait_for(state="detached", timeout=timeout)
    page.wait_for_timeout(300)


def step_heading(page):  # noqa: ANN001, ANN201
    return page.get_by_role("heading", name=re.compile(r"^Step \d+ of \d+$"))


def open_app(p, url: str):  # noqa: ANN001, ANN201
    """Chromium on the app's page, the model loaded: (browser, page, the Run button)."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: install Debian's Chromium with `apt-get install chromium` "
            "(Playwright's own browser download does not work here)"
        )
    browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    page.goto(url)
    page.wait_for_selector("[data-testid='stApp']")
    run = page.get_by_role("button", name="Run", exact=True)
    run.wait_for(timeout=120_000)  # after the model has loaded
    settle(page)
    return browser, page, run


@pytest.mark.slow
@pytest.mark.browser
def test_run_step_and_play_in_chromium(app_url: str, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser, page, run = open_app(p, app_url)

        # A short run: our own prompt, 16 new tokens, the n-gram drafter, k = 4 (the defaults).
        page.get_by_label("Prompt text").fill(PROMPT)
        page.get_by_label("New tokens").fill("16")
        page.get_by_label("New tokens").press("Enter")
        settle(page)
        run.click()
        expect(step_heading(page)).to_have_text(re.compile(r"^Step 1 of "), timeout=240_000)
        settle(page)
        n = int(step_heading(page).inner_text().split(" of ")[1])
        assert n >= 3, "16 tokens at k = 4 take at least 3 steps"
        page.screenshot(path=tmp_path / "step1.png")

        for _ in range(2):
            page.get_by_role("button", name="Next step").click()
            settle(page)
        expect(step_heading(page)).to_have_text(f"Step 3 of {n}")
        page.screenshot(path=tmp_path / "step3.png")
        if os.environ.get("MINISPEC_APP_SCREENSHOT"):
            shutil.copy(tmp_path / "step3.png", os.environ["MINISPEC_APP_SCREENSHOT"])

        # What the step panel shows, in order, and the whole output as a coloured strip.
        assert page.locator("[data-testid='stException']").count() == 0
        for part in (
            "1 · The context so far",
            "2 · The drafter guesses",
            "3 · One verification pass",
            "6 · Roll back the KV cache",
        ):
            expect(page.get_by_role("heading", name=part)).to_be_visible()
        expect(page.get_by_text(re.compile(r"KV cache length: \d+ before"))).to_be_visible()
        expect(page.locator(".ms-strip")).to_contain_text("Copy: red, green,")  # our prompt
        assert page.locator(".ms-strip .ms-tok").count() == 16  # every new token, coloured
        assert page.locator(".ms-strip .ms-now").count() >= 1  # this step's tokens outlined
        assert "step 3" in page.locator(".ms-strip .ms-now").first.get_attribute("title")

        # Play animates: the step advances by itself, then Pause stops it.
        page.get_by_role("button", name="Play").click()
        expect(step_heading(page)).not_to_have_text(f"Step 3 of {n}", timeout=30_000)
        page.get_by_role("button", name="Pause").click()
        settle(page)
        expect(page.get_by_role("button", name="Play")).to_be_visible()
        page.screenshot(path=tmp_path / "played.png")

        # The numbers measured in this session, plain decoding included.
        page.get_by_role("tab", name="Numbers").click()
        settle(page)
        speedup = page.locator("[data-testid='stMetric']").filter(has_text="Speedup")
        expect(speedup).to_contain_text("×")
        page.screenshot(path=tmp_path / "numbers.png")
        assert page.locator("[data-testid='stException']").count() == 0
        browser.close()


@pytest.mark.slow
@pytest.mark.browser
def test_the_defaults_show_a_plain_and_a_speculative_speed(app_url: str) -> None:
    """Run as the page opens (Code to edit, ngram, k = 4, temperature 0.7): the Numbers tab shows
    both speeds, measured in this session, and their ratio. (How they compare with the command
    line's is measured by docs/probes/app_vs_cli.py, not here.)"""
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser, page, run = open_app(p, app_url)
        run.click()
        expect(step_heading(page)).to_have_text(re.compile(r"^Step 1 of "), timeout=240_000)
        settle(page)
        page.get_by_role("tab", name="Numbers").click()
        settle(page)
        metrics = page.locator("[data-testid='stMetric']")
        speeds = {}
        for label in ("Speculative decoding", "Plain decoding"):
            text = metrics.filter(has_text=label).inner_text()
            speeds[label] = float(re.search(r"([\d.]+) tok/s", text).group(1))
        assert all(v > 0 for v in speeds.values()), speeds
        speedup = metrics.filter(has_text="Speedup").inner_text()
        ratio = float(re.search(r"([\d.]+)×", speedup).group(1))  # from the unrounded speeds
        spec, plain = speeds["Speculative decoding"], speeds["Plain decoding"]
        # The page rounds each speed to 0.05 and the ratio to 0.005: on a busy machine (a few
        # tokens/s) that rounding alone moves the ratio by a few per cent.
        rounding = spec / plain * (0.05 / spec + 0.05 / plain) + 0.005
        assert ratio == pytest.approx(spec / plain, abs=rounding * 1.01)
        assert page.locator("[data-testid='stException']").count() == 0
        browser.close()


@pytest.mark.slow
@pytest.mark.browser
def test_a_tree_run_draws_its_tree_in_chromium(app_url: str, tmp_path: Path) -> None:
    """Draft shape "Tree" (8 nodes, the n-gram drafter): step 1 draws the tree, every node of
    it, the accepted path outlined, the mask beside it and the cache's compaction."""
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser, page, run = open_app(p, app_url)
        page.get_by_label("Prompt text").fill(PROMPT)
        page.get_by_label("New tokens").fill("12")
        page.get_by_label("New tokens").press("Enter")
        settle(page)
        page.get_by_text("Tree", exact=True).click()
        settle(page)
        expect(page.get_by_role("spinbutton", name="N, tree nodes per step")).to_have_value("8")
        run.click()
        expect(step_heading(page)).to_have_text(re.compile(r"^Step 1 of "), timeout=240_000)
        settle(page)
        heading = page.get_by_role("heading", name=re.compile(r"^2 · The drafter's tree: \d+"))
        expect(heading).to_be_visible()
        n = int(re.search(r"tree: (\d+) node", heading.inner_text()).group(1))
        assert 0 <= n <= 8
        tree = page.locator(".ms-tree")
        expect(tree).to_be_visible()
        assert tree.locator(".ms-node").count() == n + 1  # the root and every drafted node
        assert tree.locator(".ms-node.ms-path").count() >= 1  # the path starts at the root
        assert tree.locator(".ms-next").count() == 1  # the target's token after the path
        for part in ("3 · One pass over the tree, and its mask", "6 · Compact the KV cache"):
            expect(page.get_by_role("heading", name=part)).to_be_visible()
        expect(page.locator(".js-plotly-plot .heatmaplayer")).to_have_count(1)  # the mask
        expect(
            page.get_by_text(re.compile(r"after the compaction; \d+ rows? moved"))
        ).to_be_visible()
        page.screenshot(path=tmp_path / "tree.png")
        if os.environ.get("MINISPEC_APP_TREE_SCREENSHOT"):
            shutil.copy(tmp_path / "tree.png", os.environ["MINISPEC_APP_TREE_SCREENSHOT"])
        assert page.locator("[data-testid='stException']").count() == 0
        browser.close()
