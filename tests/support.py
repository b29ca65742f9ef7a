"""Shared helpers for the tests: serialization paths, snapshots of the live object
graph, same-seed runs, and interpreters with or without the fix."""

from __future__ import annotations

import copy
import io
import json
import os
import pickle
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import cloudpickle
import pyro
import torch

PYRO = tuple(int(part) for part in pyro.__version__.split("+")[0].split(".")[:3])
PY311 = sys.version_info >= (3, 11)

# Which installed versions have which bug: written out here, independently of the
# package's own table, so that a wrong table fails these tests.
GROUP_BUG = PY311 and PYRO <= (1, 9, 1)
AUTOGUIDE_BUG = True  # every release from 1.8.6 to 1.9.2
GUIDE_MESSENGER_BUG = PY311 and PYRO <= (1, 8, 6)


def _torch_roundtrip(obj: Any) -> Any:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


ROUNDTRIPS: dict[str, Callable[[Any], Any]] = {
    **{
        f"pickle{protocol}": (lambda obj, p=protocol: pickle.loads(pickle.dumps(obj, p)))
        for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1)
    },
    "torch.save": _torch_roundtrip,
    "deepcopy": copy.deepcopy,
    "copy": copy.copy,
    "cloudpickle": lambda obj: cloudpickle.loads(cloudpickle.dumps(obj)),
}

#: Paths whose result is a new, independent object (copy.copy shares children).
DEEP_PATHS = [name for name in ROUNDTRIPS if name != "copy"]


def _objects(root: Any) -> list[Any]:
    """The Pyro objects reachable from ``root`` that serialization could touch."""
    seen: dict[int, Any] = {}

    def visit(obj: Any) -> None:
        if id(obj) in seen or not hasattr(obj, "__dict__"):
            return
        seen[id(obj)] = obj
        if isinstance(obj, torch.nn.Module):
            for module in obj.modules():
                visit(module)
            for tensor in [*obj.parameters(), *obj.buffers()]:
                seen.setdefault(id(tensor), tensor)
        for group in getattr(obj, "__dict__", {}).get("groups", {}).values():
            visit(group)
        for name in ("_params",):  # the param store
            for tensor in obj.__dict__.get(name, {}).values():
                seen.setdefault(id(tensor), tensor)

    visit(root)
    return list(seen.values())


def snapshot(root: Any) -> list[tuple[int, int, dict[str, int], dict[str, list[int]]]]:
    """Identity of every reachable ``__dict__``, of its values, and of the items of
    its containers (nn.Module registries and the like)."""
    rows = []
    for obj in _objects(root):
        attributes = obj.__dict__
        containers = {
            name: [id(item) for item in (value.values() if isinstance(value, dict) else value)]
            for name, value in attributes.items()
            if isinstance(value, (dict, list, set))
        }
        rows.append(
            (id(obj), id(attributes), {k: id(v) for k, v in attributes.items()}, containers)
        )
    return rows


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
