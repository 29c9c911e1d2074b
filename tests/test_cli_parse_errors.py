"""A command line click cannot parse is one `error:` line on stderr and exit 2 (no usage box),
through the installed entry point's code path (`python -m ensemble_da.cli`), writing nothing."""

from __future__ import annotations

import subprocess
import sys

import pytest

CASES = [
    (["sweep", "--max-parallel", "0"], "Invalid value for '--max-parallel'", "ensemble-da sweep --help"),
    (["sweep", "--max-parallel", "abc"], "valid integer", "ensemble-da sweep --help"),
    (["run", "--bogus"], "No such option: --bogus", "ensemble-da run --help"),
    (["run", "a.yaml", "b.yaml"], "unexpected extra argument", "ensemble-da run --help"),
    (["train"], "Missing argument", "ensemble-da train --help"),
    (["data", "speedy", "--nope"], "No such option: --nope", "ensemble-da data speedy --help"),
    (["forecast"], "No such command 'forecast'", "ensemble-da --help"),
]


def _cli(args: list[str], cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ensemble_da.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args,words,hint", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_parse_error_is_one_line(tmp_path, args, words, hint):
    result = _cli(args, tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert words in lines[0] and lines[0].endswith(f"(see {hint})"), lines[0]
    assert result.stdout == "" and list(tmp_path.iterdir()) == []


def test_help_and_bare_command_still_show_help(tmp_path):
    helped = _cli(["run", "--help"], tmp_path)
    assert helped.returncode == 0 and "Usage: ensemble-da run" in helped.stdout and helped.stderr == ""
    bare = _cli([], tmp_path)
    assert bare.returncode == 2 and "Usage: ensemble-da" in bare.stdout + bare.stderr
    assert "error:" not in bare.stdout + bare.stderr
