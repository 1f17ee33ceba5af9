"""The README's commands are the contract: `.ci/run` runs its test command, verbatim."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    return re.findall(r"```bash\n(.*?)\n```", (ROOT / "README.md").read_text(), re.S)


def test_ci_runs_exactly_the_readme_test_command() -> None:
    test_command = [c for c in readme_commands() if "pytest" in c]
    assert len(test_command) == 1, "the README should show one test command"
    ci = [line for line in (ROOT / ".ci/run").read_text().splitlines() if line.strip()]
    assert ci[-1] == test_command[0]
    # nothing runs before it but `cd` into the clone
    commands = [line for line in ci if not line.startswith(("#", "set ", "cd "))]
    assert commands == test_command
