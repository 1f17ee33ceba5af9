"""The app's speeds beside the command line's, on the same prompt and settings, same minutes.

    python docs/probes/app_vs_cli.py [ROUNDS] [DRAFTER]

Starts `streamlit run viz/app.py` on the real model, opens it in headless Chromium (Debian's,
or MINISPEC_CHROMIUM), and per round: `minispec generate --json` plain and speculative with the
page's default prompt and settings, then the page's own Run (a fresh browser session, so that
plain decoding is measured again) and the "Numbers" tab's two speeds, then the command line
again. Prints each round and the ratio app / command line of the medians. DRAFTER (default:
the page's, ngram) is chosen in the page's sidebar. Not a test: it asserts nothing.
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from test_app_browser import CHROMIUM, CHROMIUM_ARGS, settle, step_heading, streamlit_app  # noqa: E402


def page_settings(page) -> dict:  # noqa: ANN001
    """The sidebar's settings as the page shows them."""
    value = lambda label: page.get_by_label(label, exact=True).last.input_value()  # noqa: E731
    return {
        "prompt": value("Prompt text"),
        "k": int(value("k, guesses per step")),
        "max_new_tokens": int(value("New tokens")),
        "temperature": float(value("Temperature")),
        "top_p": float(value("Top-p")),
        "seed": int(value("Seed")),
    }


def app_round(browser, url: str, drafter: str | None) -> tuple[dict, float, float]:  # noqa: ANN001
    """One Run in a fresh session: (settings, speculative tokens/s, plain tokens/s)."""
    context = browser.new_context(viewport={"width": 1440, "height": 1000})  # no shared session
    page = context.new_page()
    page.goto(url)
    page.wait_for_selector("[data-testid='stApp']")
    run = page.get_by_role("button", name="Run", exact=True)
    run.wait_for(timeout=600_000)
    settle(page, 600_000)
    if drafter:
        page.get_by_label("Drafter").click()  # a select box: open it, pick the option
        page.get_by_role("option", name=drafter, exact=True).click()
        settle(page)
    settings = page_settings(page)
    run.click()
    step_heading(page).wait_for(timeout=600_000)
    settle(page, 600_000)
    page.get_by_role("tab", name="Numbers").click()
    settle(page)

    def metric(label: str) -> float:
        text = page.locator("[data-testid='stMetric']").filter(has_text=label).inner_text()
        return float(re.search(r"([\d.]+) tok/s", text).group(1))

    speeds = metric("Speculative decoding"), metric("Plain decoding")
    context.close()
    return settings, *speeds


def cli_speed(s: dict, drafter: str) -> float:
    cmd = [sys.executable, "-m", "minispec", "generate", "--json", "--prompt", s["prompt"]]
    cmd += ["--drafter", drafter, "--k", str(s["k"]), "--max-new-tokens", str(s["max_new_tokens"])]
    cmd += ["--temperature", str(s["temperature"]), "--top-p", str(s["top_p"])]
    cmd += ["--seed", str(s["seed"])]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout)["tokens_per_s"]


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    drafter = sys.argv[2] if len(sys.argv) > 2 else None
    from playwright.sync_api import sync_playwright

    rows = []
    log = Path("/tmp/minispec-app-vs-cli.log")
    with streamlit_app("gemma", ROOT, log) as port, sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        url = f"http://127.0.0.1:{port}"
        app_round(browser, url, drafter)  # the first Run loads the model and compiles: not timed
        for r in range(rounds):
            s, app_spec, app_plain = app_round(browser, url, drafter)
            spec_name = drafter or "ngram"
            cli = [(cli_speed(s, "none"), cli_speed(s, spec_name)) for _ in range(2)]
            cli_plain = statistics.mean(c[0] for c in cli)
            cli_spec = statistics.mean(c[1] for c in cli)
            rows.append((app_plain, app_spec, cli_plain, cli_spec))
            print(
                f"round {r + 1}: app plain {app_plain:.1f}, speculative {app_spec:.1f} "
                f"({app_spec / app_plain:.2f}x) | command line plain {cli_plain:.1f}, "
                f"speculative {cli_spec:.1f} ({cli_spec / cli_plain:.2f}x)",
                flush=True,
            )
        browser.close()
    med = [statistics.median(col) for col in zip(*rows, strict=True)]
    print(
        f"settings: {spec_name}, k = {s['k']}, {s['max_new_tokens']} tokens, temperature "
        f"{s['temperature']}, top-p {s['top_p']}, seed {s['seed']}\n"
        f"medians: app plain {med[0]:.1f}, speculative {med[1]:.1f} ({med[1] / med[0]:.2f}x); "
        f"command line plain {med[2]:.1f}, speculative {med[3]:.1f} ({med[3] / med[2]:.2f}x)\n"
        f"app / command line: plain {med[0] / med[2]:.2f}, speculative {med[1] / med[3]:.2f}"
    )


if __name__ == "__main__":
    main()
