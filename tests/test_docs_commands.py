"""Commands in the user-facing docs fail visibly: every curl call passes --fail-with-body."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
DOCS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md")), REPO_ROOT / "docker-compose.yml"]
# `curl` as a command: at a line start, after a prompt, a pipe, `&&`, `;`, `$(` or a comment's `#`.
CURL_COMMAND = re.compile(r"(?:^|[|;&(#$]\s*)curl\s", re.MULTILINE)


def _curl_commands(text: str) -> list[str]:
    """Each curl command with its continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", text)
    commands = []
    for match in CURL_COMMAND.finditer(joined):
        end = joined.find("\n", match.end())
        commands.append(joined[match.start() : end if end != -1 else None].strip())
    return commands


@pytest.mark.parametrize("path", DOCS, ids=lambda path: path.name)
def test_every_curl_command_fails_visibly(path: Path) -> None:
    commands = _curl_commands(path.read_text())
    silent = [command for command in commands if "--fail-with-body" not in command]
    assert not silent, (
        f"{path.name}: curl without --fail-with-body (errors would be saved as results): {silent}"
    )


def test_the_check_finds_curl_commands() -> None:
    sample = (
        "```sh\ncurl -s -o x.png http://h/\ncurl -sS --fail-with-body \\\n   -o y http://h/\n"
        "# curl -F a=b\n```"
    )
    commands = _curl_commands(sample)
    assert len(commands) == 3
    assert sum("--fail-with-body" in command for command in commands) == 1
