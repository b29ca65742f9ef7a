"""Shared helpers for the tests: serialization paths, snapshots of the live object
graph, same-seed runs, and interpreters with or without the fix."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pyro
import torch

from pyro_pickle_fix.diagnostics.audit import PARAM_STORE, PATHS
from pyro_pickle_fix.diagnostics.snapshot import snapshot  # noqa: F401  (the one snapshot, shipped)

PYRO = tuple(int(part) for part in pyro.__version__.split("+")[0].split(".")[:3])
PY311 = sys.version_info >= (3, 11)

# Which installed versions have which bug: written out here, independently of the
# package's own table, so that a wrong table fails these tests.
GROUP_BUG = PY311 and PYRO <= (1, 9, 1)
GUIDE_MESSENGER_BUG = PY311 and PYRO <= (1, 8, 6)


#: The audit's serialization paths, but the param store's (it saves no object).
ROUNDTRIPS: dict[str, Callable[[Any], Any]] = {
    name: roundtrip for name, roundtrip in PATHS.items() if name != PARAM_STORE
}


def run_python(
    code: str, *, fix: bool | None = True, env: dict[str, str] | None = None, timeout: int = 300
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter of this environment.

    ``fix``: True/False set PYRO_PICKLE_FIX to 1/0; None leaves it unset.
    """
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PYRO_PICKLE_FIX")}
    if fix is not None:
        environment["PYRO_PICKLE_FIX"] = "1" if fix else "0"
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-c", code],
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_json(code: str, **kwargs: Any) -> Any:
    """Run ``code`` (which prints JSON last) in a fresh interpreter; its output."""
    done = run_python(code, **kwargs)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def assert_same_tensors(a: Any, b: Any) -> None:
    """Nested dicts / lists of tensors and numbers are exactly equal."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same_tensors(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same_tensors(x, y)
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), (a, b)
    else:
        assert a == b


def outputs_from_seed(run: Callable[[], Any], seed: int = 1) -> Any:
    """What ``run`` gives from ``seed`` with an empty param store, so that each guide
    uses its own parameters."""
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    return run()


def stock_error(statement: str) -> str | None:
    """``statement`` run after ``import json, pyro`` with the fix off: the type name of
    what it raised, or None."""
    return run_json(
        "import json, pyro\n"
        "try:\n"
        f"    {statement}; error = None\n"
        "except Exception as e:\n"
        "    error = type(e).__name__\n"
        "print(json.dumps(error))",
        fix=False,
    )
