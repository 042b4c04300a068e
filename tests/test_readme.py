"""The README's first screen and CI must agree (DEVELOPERS: exactly two set-up commands)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _first_screen_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    first_screen = text.split("\n---\n", 1)[0]
    return re.findall(r"```bash\n(.*?)\n```", first_screen, flags=re.S)


def test_readme_has_exactly_two_setup_commands() -> None:
    commands = _first_screen_commands()
    assert len(commands) == 2, commands
    for command in commands:
        assert "\n" not in command.strip(), "each set-up command is one line"
        assert command.startswith("python3 -m venv .venv && "), "each command makes its own venv"
    main_job, tests = commands
    assert "adapt --camera" in main_job and "samples/cameras" in main_job
    assert "pytest" in tests


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    match = re.search(r"^TEST_COMMAND='(.*)'$", ci, flags=re.M)
    assert match, "the CI script defines TEST_COMMAND"
    assert match.group(1) == _first_screen_commands()[1]
    assert 'bash -c "$TEST_COMMAND"' in ci


def test_main_job_uses_bundled_samples_that_exist() -> None:
    main_job = _first_screen_commands()[0]
    for path in re.findall(r"samples/[\w/.-]+", main_job):
        assert (ROOT / path).exists(), path
