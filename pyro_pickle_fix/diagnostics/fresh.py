"""Running diagnostics in two fresh interpreters, one without the fix and one with
it (switched by ``PYRO_PICKLE_FIX``, as for any program), for side-by-side reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any

SIDES = (("without the fix", False), ("with the fix", True))


def run_fresh(module: str, args: Sequence[str], fix: bool, python: str = sys.executable) -> Any:
    """``python -m module args`` with the fix on or off: the JSON it prints last, or
    ``{"crashed": line, "exit": code}`` with its last stderr line."""
    env = dict(os.environ, PYRO_PICKLE_FIX="1" if fix else "0")
    done = subprocess.run(
        [python, "-m", module, *args], env=env, capture_output=True, text=True, check=False
    )
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = done.stderr.strip().splitlines()[-1:] or [f"exit code {done.returncode}"]
        return {"crashed": tail[0], "exit": done.returncode}
    return json.loads(lines[-1])


REPORT_IT = (
    "Run `python -m pyro_pickle_fix status` and report both outputs "
    "to the pyro-pickle-fix issue tracker."
)


def versions_line(versions: Mapping[str, str]) -> str:
    return "  " + ", ".join(f"{name} {version}" for name, version in versions.items())
