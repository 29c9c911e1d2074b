"""The Makefile's venv check: an existing .venv of another Python version than PYTHON is one
`error:` line (exit 2) saying to remove it, not silently reused. Run on a copy of the Makefile with
stand-in interpreters (shell scripts printing a version): no virtualenv is built."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _python(path: Path, version: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\necho {version}\n")
    path.chmod(0o755)
    return path


def _make(tmp_path: Path, python: Path) -> subprocess.CompletedProcess:
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    return subprocess.run(["make", "--no-print-directory", "-s", "venv-python", f"PYTHON={python}"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)


def test_a_venv_of_another_python_stops_make_with_one_error_line(tmp_path):
    _python(tmp_path / ".venv" / "bin" / "python", "3.11")
    res = _make(tmp_path, _python(tmp_path / "bin" / "python3.12", "3.12"))
    assert res.returncode == 2
    errors = [x for x in res.stderr.splitlines() if x.startswith("error: ")]
    assert errors == [f"error: .venv was made with Python 3.11 but PYTHON={tmp_path}/bin/python3.12 is Python 3.12; "
                      f"remove .venv (rm -rf .venv) to rebuild it with {tmp_path}/bin/python3.12, or keep it with "
                      "PYTHON=python3.11"], res.stderr


@pytest.mark.parametrize("venv", ["3.12", None])
def test_the_same_python_or_no_venv_passes(tmp_path, venv):
    if venv:
        _python(tmp_path / ".venv" / "bin" / "python", venv)
    res = _make(tmp_path, _python(tmp_path / "bin" / "python3.12", "3.12"))
    assert res.returncode == 0 and res.stderr == "", res.stderr


def test_the_check_runs_before_the_install_even_when_the_venv_is_up_to_date():
    """Order-only: listed by `make -n demo`, first, however fresh the stamp."""
    res = subprocess.run(["make", "--no-print-directory", "-n", "demo"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("if [ -x .venv/bin/python ]; then")
    assert "was made with Python" in res.stdout
