#!/usr/bin/env python3
"""Set-up and the two everyday commands, from a fresh clone with only python3:

    python3 dev.py check   # the main job: does saving a guide corrupt it here?
    python3 dev.py test    # linters + the test matrix + the compatibility table

Both create (or reuse) ``.venv`` and install everything into it.  torch is pinned
to 2.13.0: on this project's machines an unpinned torch pulls a multi-GB CUDA build.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PYTHON = VENV / "bin" / "python"
# pyro-ppl 1.9.1: the release most users are pinned to, and one with every bug.
REQUIREMENTS = ["torch==2.13.0", "pyro-ppl==1.9.1", "nox>=2024.3", "-e", ".[test,lint]"]


def ensure_venv() -> None:
    stamp = VENV / ".dev-stamp"
    wanted = hashlib.sha256(
        (ROOT / "pyproject.toml").read_bytes() + repr(REQUIREMENTS).encode()
    ).hexdigest()
    if PYTHON.exists() and stamp.exists() and stamp.read_text() == wanted:
        return
    print(f"dev.py: setting up {VENV}", flush=True)
    venv.create(VENV, with_pip=True, clear=PYTHON.exists())
    pip = [str(PYTHON), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, *REQUIREMENTS], cwd=ROOT, check=True)
    stamp.write_text(wanted)


def run(*command: str) -> int:
    return subprocess.run(command, cwd=ROOT, check=False).returncode


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("check", "test"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    ensure_venv()
    if argv[0] == "check":
        return run(str(PYTHON), "-m", "pyro_pickle_fix", "check", *argv[1:])
    os.environ.pop("PYRO_PICKLE_FIX", None)  # the suite decides per test
    matrix = run(str(VENV / "bin" / "nox"), *argv[1:])
    table = run(str(PYTHON), "tools/compat_table.py", ".nox/results", "README.md")
    return matrix or table


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
