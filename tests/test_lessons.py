"""The lesson notebooks, executed top to bottom in a fresh kernel with nbclient.

- As shipped, on a tiny random model (fast): every cell runs although the exercises are stubs,
  and every check says "not yet".
- With lessons/solutions/ substituted for the stubs, on the real Gemma 3 270M (slow): every
  check says "right". `python lessons/time_notebooks.py` runs them the same way and times each
  (docs/lessons.md records the times).
- Stored form: a committed notebook carries no outputs, so its diffs stay readable.

The kernel is the interpreter running pytest (a kernelspec made for the run), so a fresh clone
with `pip install -e '.[test]'` needs nothing else.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import json
import sys
from pathlib import Path
from types import ModuleType

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

LESSONS = Path(__file__).resolve().parent.parent / "lessons"
NOTEBOOKS = sorted(LESSONS.glob("[0-9][0-9]_*.ipynb"))
STEMS = [path.stem for path in NOTEBOOKS]
CELL_TIMEOUT_S = 600


def solution_module(stem: str) -> ModuleType:
    """lessons/solutions/<stem>.py, imported by path (its name starts with a digit)."""
    path = LESSONS / "solutions" / f"{stem}.py"
    spec = importlib.util.spec_from_file_location(f"lesson_solutions_{stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read(stem: str) -> nbformat.NotebookNode:
    return nbformat.read(LESSONS / f"{stem}.ipynb", as_version=4)


def tagged(nb: nbformat.NotebookNode, tag: str) -> list[nbformat.NotebookNode]:
    return [cell for cell in nb.cells if tag in cell.get("metadata", {}).get("tags", [])]


def defined_functions(source: str) -> list[str]:
    return [node.name for node in ast.parse(source).body if isinstance(node, ast.FunctionDef)]


def with_solutions(nb: nbformat.NotebookNode, stem: str) -> nbformat.NotebookNode:
    """A copy of nb whose exercise cells hold the solution's functions instead of the stubs."""
    solutions = solution_module(stem)
    nb = nbformat.reads(nbformat.writes(nb), as_version=4)  # a deep copy
    for cell in tagged(nb, "exercise"):
        names = defined_functions(cell.source)
        cell.source = "\n\n\n".join(inspect.getsource(getattr(solutions, n)) for n in names)
    return nb


def execute(nb: nbformat.NotebookNode, tmp_path: Path) -> nbformat.NotebookNode:
    """Run every cell in a fresh kernel of this interpreter, with cwd = lessons/."""
    spec_dir = tmp_path / "kernels" / "minispec-tests"
    spec_dir.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    kernel = {"argv": argv, "display_name": "minispec tests", "language": "python"}
    (spec_dir / "kernel.json").write_text(json.dumps(kernel))
    specs = KernelSpecManager(kernel_dirs=[str(spec_dir.parent)])
    km = KernelManager(kernel_name="minispec-tests", kernel_spec_manager=specs)
    client = NotebookClient(
        nb, km=km, timeout=CELL_TIMEOUT_S, resources={"metadata": {"path": str(LESSONS)}}
    )
    try:
        client.execute()
    finally:  # nbclient leaves a kernel it was handed running: each holds a model (GBs)
        if km.has_kernel:
            km.shutdown_kernel(now=True)
    return nb


def printed(cell: nbformat.NotebookNode) -> str:
    return "".join(out.get("text", "") for out in cell.outputs if out.output_type == "stream")


def check_verdicts(nb: nbformat.NotebookNode) -> list[str]:
    return [printed(cell).strip() for cell in tagged(nb, "check")]


# ------------------------------------------------------------------------- the stored form


def test_the_lessons_are_numbered_in_order_each_with_its_solutions() -> None:
    """01_, 02_, ... with no gap (six today: the forward pass to token trees)."""
    assert [int(stem[:2]) for stem in STEMS] == list(range(1, len(STEMS) + 1)), STEMS
    assert len(STEMS) >= 6, STEMS
    assert sorted(p.stem for p in (LESSONS / "solutions").glob("*.py")) == STEMS


@pytest.mark.parametrize("stem", STEMS)
def test_committed_notebook_has_no_outputs(stem: str) -> None:
    """Strip them before committing: Jupyter's Edit > Clear Outputs of All Cells, then save."""
    nb = read(stem)
    nbformat.validate(nb)
    dirty = [
        i
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)
    ]
    assert not dirty, f"{stem}.ipynb: cells {dirty} carry outputs or execution counts"


@pytest.mark.parametrize("stem", STEMS)
def test_every_exercise_has_a_solution_and_a_check(stem: str) -> None:
    nb = read(stem)
    exercises = tagged(nb, "exercise")
    assert len(exercises) >= 2, f"{stem}: at least two exercises"
    names = [n for cell in exercises for n in defined_functions(cell.source)]
    solutions = solution_module(stem)
    public = [
        n for n, _ in inspect.getmembers(solutions, inspect.isfunction) if n.startswith("my_")
    ]
    assert sorted(names) == sorted(public)
    for cell in exercises:
        assert "raise NotImplementedError" in cell.source, "an exercise ships as a stub"
        after = nb.cells[nb.cells.index(cell) + 1]
        assert "check" in after.metadata.get("tags", []), "each exercise is followed by its check"
        assert any(f"({n})" in after.source for n in defined_functions(cell.source))


@pytest.mark.parametrize("stem", STEMS)
def test_each_lesson_says_the_notation_and_ends_with_the_engines(stem: str) -> None:
    text = "\n".join(cell.source for cell in read(stem).cells if cell.cell_type == "markdown")
    assert "p = target" in text and "q = draft" in text and "Leviathan" in text
    assert "What you will learn" in text and "What you need first" in text
    last = read(stem).cells[-1]
    assert last.cell_type == "markdown" and "transformers" in last.source
    assert "vLLM" in last.source and "llama.cpp" in last.source


# ------------------------------------------------------------------------------ executed


@pytest.mark.parametrize("stem", STEMS)
def test_notebook_as_shipped_runs_and_says_not_yet(
    stem: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MINISPEC_LESSON_MODEL", "tiny")
    nb = execute(read(stem), tmp_path)
    verdicts = check_verdicts(nb)
    assert verdicts and all(v.startswith("not yet: ") for v in verdicts), verdicts


@pytest.mark.slow
@pytest.mark.parametrize("stem", STEMS)
def test_notebook_with_solutions_says_right_on_the_real_model(
    stem: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, real_checkpoint: Path
) -> None:
    monkeypatch.delenv("MINISPEC_LESSON_MODEL", raising=False)
    nb = execute(with_solutions(read(stem), stem), tmp_path)
    verdicts = check_verdicts(nb)
    assert verdicts and all(v.startswith("right: ") for v in verdicts), verdicts
