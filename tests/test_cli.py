"""The command line's small promises: ``--version``, a closed pipe, and where
``install --target`` and ``status`` say start-up activation is and whether it runs."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import pyro_pickle_fix

# The command line's work: the same on every Python, torch and pyro-ppl.
pytestmark = [pytest.mark.slow, pytest.mark.once]


def cli(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYRO_PICKLE_FIX", "PYTHON"))}
    env.update(kwargs.pop("env", {}))  # type: ignore[arg-type]
    return subprocess.run(
        [sys.executable, "-m", "pyro_pickle_fix", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        **kwargs,  # type: ignore[call-overload]
    )


def test_version_prints_the_package_version():
    done = cli("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"pyro-pickle-fix {pyro_pickle_fix.__version__}\n"


@pytest.mark.parametrize("args", [["status"], ["--version"], ["--help"]])
def test_a_closed_pipe_ends_the_command_without_a_traceback(args):
    # The reader is gone before the first write (as `| head -2` is once it has its
    # lines): every write fails with EPIPE.
    read, write = os.pipe()
    os.close(read)
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYRO_PICKLE_FIX")}
        done = subprocess.run(
            [sys.executable, "-m", "pyro_pickle_fix", *args],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            timeout=300,
            check=False,
        )
    finally:
        os.close(write)
    assert done.stderr == ""
    # argparse's own output (--version, --help) swallows the error and exits 0.
    assert done.returncode == (1 if args == ["status"] else 0)


def test_install_into_a_directory_off_sys_path_warns_and_status_says_so(tmp_path):
    done = cli("install", "--target", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"pyro-pickle-fix: installed in {tmp_path / 'sitecustomize.py'}\n"
    assert done.stderr.startswith(
        f"pyro-pickle-fix: warning: {tmp_path} is not on this interpreter's sys.path, "
        "so the block does not run at start-up"
    )
    assert "PYTHONPATH" in done.stderr
    # Installed, then put on the path: no warning, and status reports it from where it ran.
    again = cli("install", "--target", str(tmp_path), env={"PYTHONPATH": str(tmp_path)})
    assert again.returncode == 0 and again.stderr == "", again.stderr
    assert again.stdout.startswith("pyro-pickle-fix: already installed in")
    status = cli("status", env={"PYTHONPATH": str(tmp_path)})
    assert status.returncode == 0, status.stderr
    assert status.stdout.splitlines()[-1] == (
        f"start-up activation: installed in {tmp_path / 'sitecustomize.py'}, "
        "and it ran at this start-up"
    )
    # Without the directory on the path, it did not run: status looks in site-packages.
    assert "ran at this start-up" not in cli("status").stdout
    assert cli("uninstall", "--target", str(tmp_path)).returncode == 0
    assert not (tmp_path / "sitecustomize.py").exists()


def test_status_names_pyro_torch_and_python_in_its_header():
    import torch

    done = cli("status")
    assert done.returncode == 0, done.stderr
    header = done.stdout.splitlines()[0]
    assert f"torch {torch.__version__}" in header
    assert f"pyro-ppl {pyro_pickle_fix.status().pyro}" in header
