"""The replay web page: one self-contained HTML file written from a trace alone (tiny model).

Traces of each kind of drafter, greedy and sampled, become pages with nothing outside them; a bad
field is one line naming it, and nothing is written; the browser test opens a page from disk in
Chromium (the app's browser test's setup), steps with the buttons and the arrow key, and checks
what it shows against the trace. MINISPEC_REPLAY_SCREENSHOT=path.png keeps that step's
screenshot (on the tiny model; docs/replay.png is the same page of a Gemma 3 270M run).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from minispec.cli import main
from minispec.drafters import DraftModelDrafter, make_drafter
from minispec.drafters.mtp import config_for, init_params, save_mtp
from minispec.errors import InputError
from minispec.palette import COLOURS, VERDICTS
from minispec.replay_html import replay_html, write_replay_html
from minispec.sampling import SamplingParams
from minispec.speculative import speculative_generate
from minispec.tiny import tiny_model
from minispec.tokenizer import encode

PROMPT = "the cat sat on the mat; the cat sat on"
SAMPLED = SamplingParams(temperature=0.8, top_p=0.95)
GREEDY = SamplingParams(temperature=0.0)
LIMIT = 5_000_000  # bytes, for a 64-token run


@pytest.fixture(scope="module")
def target():
    return tiny_model()


@pytest.fixture(scope="module")
def tiny_mtp(target, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained MTP drafter that fits the tiny model (as tests/test_app.py makes one)."""
    cfg = config_for(target, width=16, d_ff=32, head_size=64)
    d = target.config.hidden_size
    ones, zeros = np.ones(d, np.float32), np.zeros(d, np.float32)
    params = init_params(cfg, target, np.arange(cfg.head_size), ones, zeros, 0)
    path = tmp_path_factory.mktemp("mtp") / "tiny-mtp.safetensors"
    save_mtp(path, params, cfg, target)
    return path


def run(target, drafter, sampling: SamplingParams, n: int = 16, k: int = 3, **opts) -> dict:
    ids = encode(target.tokenizer, PROMPT)
    g = speculative_generate(
        target, ids, drafter, k=k, max_new_tokens=n, sampling=sampling, seed=1, **opts
    )
    return g.trace.to_dict()


@pytest.fixture(scope="module")
def long_run(target) -> dict:
    """64 new tokens, sampled, from a separate draft model: rejections, corrections, bonuses."""
    trace = run(
        target, DraftModelDrafter(tiny_model(seed=1)), SAMPLED, n=64, k=4, stop_at_eos=False
    )
    assert len(trace["ids"]) == 64
    return trace


def external_references(html: str) -> list[str]:
    """Every src or href (and CSS url()) that points anywhere: none may."""
    refs = re.findall(r"""(?:src|href)\s*=\s*["']?([^"'\s>]+)""", html, flags=re.I)
    refs += re.findall(r"url\(([^)]*)\)", html)
    return refs + re.findall(r"<link\b[^>]*>|@import", html, flags=re.I)


KINDS = [  # (drafter, sampling)
    ("ngram", GREEDY),
    ("ngram", SAMPLED),
    ("int8", SAMPLED),
    ("draft-model", GREEDY),
    ("early-exit", GREEDY),
    ("early-exit", SAMPLED),
    ("mtp", SAMPLED),
    ("ngram+mtp", GREEDY),
    ("none", GREEDY),
]


def kind_id(x: object) -> str:
    return ("greedy" if x.greedy else "sampled") if isinstance(x, SamplingParams) else str(x)


@pytest.mark.parametrize("kind, sampling", KINDS, ids=kind_id)
def test_each_drafter_kind_makes_a_self_contained_page(
    target, tiny_mtp, kind: str, sampling: SamplingParams
) -> None:
    if kind == "draft-model":
        drafter = DraftModelDrafter(tiny_model(seed=1))
    else:
        drafter = make_drafter(kind.replace("mtp", f"mtp:{tiny_mtp}"), target)
    trace = run(target, drafter, sampling)
    html = replay_html(trace)
    assert html.startswith("<!DOCTYPE html>")
    assert external_references(html) == []
    assert len(html.encode()) < LIMIT
    data = re.search(r'<script type="application/json" id="minispec-data">(.*?)</script>', html)
    embedded = json.loads(data.group(1))
    assert embedded["trace"]["steps"] == trace["steps"]
    assert embedded["view"]["colours"] == COLOURS
    sources = {t["source"] for t in embedded["view"]["tokens"]}
    assert sources <= {"first", "accepted", "corrected", "bonus"}


def test_a_64_token_run_is_small(long_run: dict, tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    path.write_text(json.dumps(long_run))
    size = write_replay_html(path, tmp_path / "run.html")
    assert size == (tmp_path / "run.html").stat().st_size < LIMIT
    assert external_references((tmp_path / "run.html").read_text()) == []


def test_token_text_cannot_close_the_script(long_run: dict) -> None:
    trace = json.loads(json.dumps(long_run))
    trace["prompt_text"] = "</script><script>alert(1)</script><!--"
    trace["steps"][0]["drafted"][0]["text"] = "</SCRIPT>"
    html = replay_html(trace)
    assert html.lower().count("</script>") == 2  # the data's and the code's own
    assert "alert(1)" in html  # still there, as data


def test_a_trace_without_token_texts_shows_token_ids(long_run: dict) -> None:
    """A trace recorded without a tokenizer has null texts: the page shows ⟨id⟩ instead."""

    def strip_texts(node: object) -> None:
        if isinstance(node, dict):
            for key in node:
                if key in ("text", "prompt_text", "emitted_text"):
                    node[key] = None
                else:
                    strip_texts(node[key])
        elif isinstance(node, list):
            for item in node:
                strip_texts(item)

    trace = json.loads(json.dumps(long_run))
    strip_texts(trace)
    html = replay_html(trace)
    data = re.search(r'id="minispec-data">(.*?)</script>', html).group(1)
    view = json.loads(data)["view"]
    assert view["prompt"].startswith(f"⟨{trace['prompt_ids'][0]}⟩")
    assert [t["text"] for t in view["tokens"]] == [f"⟨{i}⟩" for i in trace["ids"]]


@pytest.mark.parametrize(
    "mangle, field",
    [
        (lambda d: d.pop("k"), "'k'"),
        (lambda d: d["sampling"].pop("greedy"), "'sampling.greedy'"),
        (lambda d: d["steps"][1].pop("target"), "'steps[1].target'"),
        (lambda d: d["steps"][2].update(accepted="two"), "'steps[2].accepted'"),
        (lambda d: d["steps"][0]["decisions"][0].pop("u"), "'steps[0].decisions[0].u'"),
        (lambda d: d["steps"][3]["next_token"].update(kind="guess"), "'steps[3].next_token.kind'"),
        (lambda d: d["steps"][0]["target"][0]["top_p"][0].pop("prob"), "top_p[0].prob'"),
    ],
)
def test_a_bad_field_is_named_and_nothing_is_written(
    long_run: dict, tmp_path: Path, capsys: pytest.CaptureFixture, mangle, field: str
) -> None:
    trace = json.loads(json.dumps(long_run))
    mangle(trace)
    with pytest.raises(InputError, match=re.escape(field)):
        replay_html(trace)
    path, out = tmp_path / "bad.json", tmp_path / "bad.html"
    path.write_text(json.dumps(trace))
    assert main(["replay", str(path), "--html", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("minispec: error: ") and field in err[0], err
    assert not out.exists()


@pytest.mark.parametrize(
    "text, message",
    [
        ("{ half", "not JSON"),
        ("[1]", "not a minispec trace"),
        ('{"format": "x"}', "not a minispec"),
    ],
)
def test_a_file_that_is_not_a_trace(tmp_path: Path, capsys, text: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text)
    assert main(["replay", str(path), "--html", str(tmp_path / "out.html")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out.html").exists()


def test_the_replay_command(long_run: dict, tmp_path: Path, capsys) -> None:
    path, out = tmp_path / "run.json", tmp_path / "run.html"
    path.write_text(json.dumps(long_run))
    assert main(["replay", str(path), "--html", str(out), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == {"html": str(out), "bytes": out.stat().st_size}
    assert main(["replay", str(path), "--html", str(out)]) == 0
    assert "wrote" in capsys.readouterr().err
    assert main(["replay", str(tmp_path / "missing.json"), "--html", str(out)]) == 2
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "replay" in capsys.readouterr().out


def test_the_app_and_the_page_share_one_palette() -> None:
    from minispec import palette
    from viz import look

    assert look.COLOURS is palette.COLOURS and look.NAMES is palette.NAMES


# ----------------------------------------------------------------------------- in a browser


def hex_rgb(colour: str) -> str:
    r, g, b = (int(colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgb({r}, {g}, {b})"


@pytest.mark.browser
def test_the_page_steps_in_chromium_from_disk(long_run: dict, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright
    from test_app_browser import CHROMIUM, CHROMIUM_ARGS

    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: install Debian's Chromium (`apt-get install chromium`)"
        )
    page_path = tmp_path / "run.html"
    page_path.write_text(replay_html(long_run), encoding="utf-8")
    steps, n = long_run["steps"], len(long_run["steps"])
    assert n >= 5
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        page = browser.new_page(viewport={"width": 1300, "height": 1000})
        requests, errors = [], []
        page.on("request", lambda r: requests.append(r.url))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(page_path.as_uri())
        expect(page.locator("#counter")).to_have_text(f"Step 1 of {n}")
        for _ in range(3):
            page.get_by_role("button", name="Next step").click()
        expect(page.locator("#counter")).to_have_text(f"Step 4 of {n}")
        page.keyboard.press("ArrowRight")
        expect(page.locator("#counter")).to_have_text(f"Step 5 of {n}")
        record = steps[4]  # the trace's step 4, the fifth

        verdicts = page.locator(".verdict").all_inner_texts()
        assert verdicts == [VERDICTS[d["accepted"]] for d in record["decisions"]]
        now = page.locator("#strip .tok.now")
        expected = ["accepted"] * record["accepted"] + [record["next_token"]["kind"]]
        expected = expected[: len(record["emitted"])]
        assert now.evaluate_all("els => els.map(e => e.dataset.source)") == expected
        colours = now.evaluate_all("els => els.map(e => getComputedStyle(e).borderBottomColor)")
        assert colours == [hex_rgb(COLOURS[s]) for s in expected]
        later = sum(len(r["emitted"]) for r in steps[5:])
        assert page.locator("#strip .tok.future").count() == later
        expect(page.locator("#step")).to_contain_text(
            f"KV cache length: {record['kv_length_before']} before"
        )
        if os.environ.get("MINISPEC_REPLAY_SCREENSHOT"):
            page.screenshot(path=os.environ["MINISPEC_REPLAY_SCREENSHOT"], full_page=True)

        page.keyboard.press("ArrowLeft")
        expect(page.locator("#counter")).to_have_text(f"Step 4 of {n}")
        page.get_by_role("button", name="Play").click()
        expect(page.locator("#counter")).to_have_text(f"Step 5 of {n}", timeout=5_000)
        page.get_by_role("button", name="Pause").click()
        assert errors == []
        assert all(url.startswith("file://") for url in requests), requests
        browser.close()
