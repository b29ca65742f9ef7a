"""dev.py's part of the matrix: the interpreters nox is given."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from scratch_env import ROOT

sys.path.insert(0, str(ROOT))
try:
    import dev
finally:
    sys.path.remove(str(ROOT))

#: A version that neither PATH nor pyenv has anywhere.
ABSENT = "3.99"


def _provider(tmp_path: Path, body: str) -> Path:
    """A stand-in for shared/tools/debian-python: logs each call, then runs ``body``."""
    script = tmp_path / "debian-python"
    script.write_text(f'echo "$1" >>"{tmp_path}/calls"\n{body}\n')
    return script


def _calls(tmp_path: Path) -> list[str]:
    log = tmp_path / "calls"
    return log.read_text().split() if log.exists() else []


@pytest.fixture
def no_pyenv(tmp_path, monkeypatch):
    monkeypatch.setenv("PYENV_ROOT", str(tmp_path / "no-pyenv"))


def test_a_python_neither_path_nor_pyenv_has_comes_from_the_provider(tmp_path, no_pyenv):
    provider = _provider(tmp_path, f'echo "{sys.executable}"')
    env = dev.interpreters_on_path((ABSENT,), provider, tmp_path / "links")
    found = shutil.which(f"python{ABSENT}", path=env["PATH"])
    assert found == str(tmp_path / "links" / f"python{ABSENT}")
    assert Path(found).resolve() == Path(sys.executable).resolve()
    # The link is an interpreter that runs, as nox's venv will run it.
    ran = subprocess.run([found, "-c", "import sys; print(sys.version_info[:2])"], env=env)
    assert ran.returncode == 0
    assert _calls(tmp_path) == [ABSENT]


def test_a_python_on_path_is_used_as_it_is(tmp_path, no_pyenv, monkeypatch):
    provider = _provider(tmp_path, "exit 1")
    here = f"{sys.version_info[0]}.{sys.version_info[1]}"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / f"python{here}").symlink_to(sys.executable)
    monkeypatch.setenv("PATH", os.pathsep.join([str(bin_dir), os.environ["PATH"]]))
    env = dev.interpreters_on_path((here,), provider, tmp_path / "links")
    assert shutil.which(f"python{here}", path=env["PATH"]) == str(bin_dir / f"python{here}")
    assert _calls(tmp_path) == [] and not (tmp_path / "links").exists()


def test_a_provider_that_fails_leaves_that_version_missing_and_says_why(tmp_path, no_pyenv, capsys):
    provider = _provider(
        tmp_path, 'echo "debian-python: Debian does not package CPython $1" >&2; exit 1'
    )
    env = dev.interpreters_on_path((ABSENT,), provider, tmp_path / "links")
    assert shutil.which(f"python{ABSENT}", path=env["PATH"]) is None
    assert f"Debian does not package CPython {ABSENT}" in capsys.readouterr().out


def test_without_the_provider_the_path_is_pyenvs_and_the_callers(tmp_path, no_pyenv):
    env = dev.interpreters_on_path((ABSENT,), tmp_path / "absent", tmp_path / "links")
    assert env["PATH"] == os.environ["PATH"]
    assert not (tmp_path / "links").exists()


def test_dev_reads_the_pythons_the_package_declares():
    text = (ROOT / "pyproject.toml").read_text()
    declared = re.findall(r'"Programming Language :: Python :: (3\.\d+)"', text)
    assert dev.nox_pythons() == declared
