"""README.md's code: every Python block runs as written, in a fresh interpreter.

A block that needs a running server or several processes is marked by the line
``<!-- readme-test: skip: <why, and which test runs it> -->`` just above it.
"""

import os
import re
import subprocess
import sys

import pytest

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SKIP = "<!-- readme-test: skip:"
_COMMANDS = [
    "python3 -m venv .venv && .venv/bin/pip install -q -e . && .venv/bin/ol-jax demo",
    "python3 -m venv .venv && .venv/bin/pip install -q -e '.[test]' && "
    ".venv/bin/python -m pytest -q -p no:cacheprovider -n 2 --dist loadfile "
    "--no-loadscope-reorder tests",
]


def _blocks():
    """``(language, code, skip_reason, line)`` of each fenced block."""
    with open(os.path.join(_REPO, "README.md"), encoding="utf-8") as f:
        text = f.read()
    blocks = []
    for m in re.finditer(r"^```(\w*)[^\n]*\n(.*?)^```$", text, re.S | re.M):
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        skip = None
        if before.startswith(_SKIP):
            skip = before[len(_SKIP) :].removesuffix("-->").strip()
        line = text[: m.start()].count("\n") + 1
        blocks.append((m.group(1), m.group(2), skip, line))
    return blocks


_PYTHON = [b for b in _blocks() if b[0] == "python"]


def test_first_block_is_the_two_commands():
    language, code, _, _ = _blocks()[0]
    assert language == "bash"
    assert code.splitlines() == _COMMANDS


def test_skipped_blocks_say_why():
    skipped = [b for b in _PYTHON if b[2] is not None]
    assert all(len(reason) > 10 and "test" in reason for *_, reason, _ in skipped)
    assert len(skipped) < len(_PYTHON)  # most of the README runs


@pytest.mark.parametrize(
    "code, skip",
    [(b[1], b[2]) for b in _PYTHON],
    ids=[f"line{b[3]}" for b in _PYTHON],
)
def test_python_block_runs(code, skip, tmp_path):
    if skip is not None:
        pytest.skip(skip)
    path = os.environ.get("PYTHONPATH", "")
    env = dict(os.environ, PYTHONPATH=_REPO + (os.pathsep + path if path else ""))
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
