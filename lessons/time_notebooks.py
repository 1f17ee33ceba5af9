"""Time each lesson as CI runs it: solutions in place of the stubs, real model, fresh kernel.

    python lessons/time_notebooks.py                  # every lesson
    python lessons/time_notebooks.py 05_drafters_and_speedup --out /tmp/executed

Prints a Markdown table (docs/lessons.md keeps the last one): each notebook's wall time from
starting its kernel to its last cell, its slowest cells, and the load average before and after,
since the machine may be shared. Needs the test extra (nbclient) and the converted checkpoint
(the first run converts it, about half a minute, before any notebook starts).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def lesson_tests() -> object:
    """tests/test_lessons.py, whose `execute` and `with_solutions` are what CI runs."""
    path = ROOT / "tests" / "test_lessons.py"
    spec = importlib.util.spec_from_file_location("test_lessons", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cell_seconds(cell: dict) -> float:
    """How long a cell ran, from the timestamps nbclient records in its metadata."""
    t = cell.metadata.get("execution", {})
    start, end = t.get("iopub.execute_input"), t.get("shell.execute_reply")
    if not (start and end):
        return 0.0
    parse = datetime.fromisoformat
    return (parse(end.replace("Z", "+00:00")) - parse(start.replace("Z", "+00:00"))).total_seconds()


def first_line(cell: dict) -> str:
    return cell.source.strip().splitlines()[0][:60] if cell.source.strip() else ""


def main(args: list[str]) -> int:
    out = Path(args.pop(args.index("--out") + 1)) if "--out" in args else None  # executed copies
    stems = [a for a in args if a != "--out"]
    from minispec.cache import default_checkpoint

    tests = lesson_tests()
    os.environ.pop("MINISPEC_LESSON_MODEL", None)  # the real model
    default_checkpoint()  # convert once, outside the timings
    print(f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs\n")
    print("| notebook | seconds | slowest cells (seconds) | load before → after |")
    print("|---|---|---|---|")
    failed = 0
    for stem in stems or tests.STEMS:
        before = os.getloadavg()[0]
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            nb = tests.execute(tests.with_solutions(tests.read(stem), stem), Path(tmp))
        if out:
            out.mkdir(parents=True, exist_ok=True)
            tests.nbformat.write(nb, out / f"{stem}.ipynb")
        seconds = time.perf_counter() - t0
        after = os.getloadavg()[0]
        code = [c for c in nb.cells if c.cell_type == "code"]
        slow = sorted(code, key=cell_seconds, reverse=True)[:3]
        cells = "; ".join(f"`{first_line(c)}` {cell_seconds(c):.0f}" for c in slow)
        verdicts = tests.check_verdicts(nb)
        ok = verdicts and all(v.startswith("right: ") for v in verdicts)
        failed += not ok
        mark = "" if ok else " (a check did not say right)"
        row = f"| {stem}{mark} | {seconds:.0f} | {cells} | {before:.1f} → {after:.1f} |"
        print(row, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
