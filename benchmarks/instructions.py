"""What the fix costs, counted in instructions rather than timed.

    .venv/bin/python benchmarks/instructions.py                # every case, as a table
    .venv/bin/python benchmarks/instructions.py CASE...        # those cases only
    .venv/bin/python benchmarks/instructions.py CASE COUNT     # set up, then COUNT operations

Each figure is one run under ``valgrind --tool=callgrind`` that counts only the
instructions spent inside the operations: they run inside ``itertools.accumulate``
(``--toggle-collect=accumulate_next``, a C function nothing else here calls), so
interpreter start, imports and set-up are not counted at all.  That is done with
the fix on and off (``PYRO_PICKLE_FIX``); the ratio of the per-operation counts is
the fix's cost.  Counts do not depend on what else the machine is doing.
"""

from __future__ import annotations

import gc
import io
import os
import re
import subprocess
import sys
from collections.abc import Callable
from typing import Any

# set-up for N operations -> the operations (each called once)
Case = Callable[[int], list[Callable[[], object]]]


def _saver() -> Callable[[object], object]:
    """``torch.save`` to a file, as users save.  Not to an ``io.BytesIO``: its buffer
    grows by ``realloc``, which copies it whenever malloc placed another block right
    behind it, so the count would depend on where the run's other allocations
    landed (up to 0.3% of a tutorial save, different between identical runs)."""
    import tempfile

    import torch

    path = os.path.join(tempfile.mkdtemp(), "saved.pt")
    return lambda obj: torch.save(obj, path)


def _tutorial_saves(n: int) -> Callable[[], object]:
    from pyro_pickle_fix.diagnostics import tutorial

    guides = [tutorial.trained_guide(seed)[0] for seed in range(n)]
    save = _saver()
    return [lambda guide=guide: save(guide) for guide in guides]


def _auto_normal_saves(n: int) -> Callable[[], object]:
    import pyro
    import pyro.distributions as dist
    from pyro.infer.autoguide import AutoNormal

    def model() -> None:
        for i in range(1000):
            pyro.sample(f"z{i}", dist.Normal(0.0, 1.0))

    guides = []
    for _ in range(n):
        guide = AutoNormal(model)
        guide()
        guides.append(guide)
    save = _saver()
    return [lambda guide=guide: save(guide) for guide in guides]


def _plain_model() -> Any:
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(
        *[torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Tanh()) for _ in range(50)]
    )


def _plain_deepcopies(n: int) -> Callable[[], object]:
    import copy

    model = _plain_model()
    return [lambda: copy.deepcopy(model)] * n


def _plain_loads(n: int) -> Callable[[], object]:
    import torch

    buffer = io.BytesIO()
    torch.save(_plain_model(), buffer)
    data = buffer.getvalue()
    return [lambda: torch.load(io.BytesIO(data), weights_only=False)] * n


def _tensor_saves(n: int) -> Callable[[], object]:
    import torch

    state = {f"t{i}": torch.full((4,), float(i)) for i in range(1000)}
    save = _saver()
    return [lambda: save(state)] * n


def _modules(count: int) -> Callable[[int], list[Callable[[], object]]]:
    """One ``pickle.dumps`` of a list of ``count`` PyroModules, each with a
    constrained parameter read once (pyro's weakref on it), with the garbage
    collector on: the fix's cost must not grow faster than the stream."""

    def setup(n: int) -> list[Callable[[], object]]:
        import pickle

        import torch
        from pyro.nn import PyroModule, PyroParam

        modules = []
        for _ in range(count):
            module = PyroModule()
            module.w = PyroParam(torch.ones(2), constraint=torch.distributions.constraints.positive)
            module.w  # noqa: B018  (pyro's weakref on the value)
            modules.append(module)
        return [lambda: pickle.dumps(modules)] * n

    return setup


#: name -> (what one operation is, set-up returning the N operations, N)
CASES: dict[str, tuple[str, Case, int]] = {
    "tutorial-save": ("torch.save of a trained tutorial EasyGuide", _tutorial_saves, 8),
    "autonormal-save": ("torch.save of an AutoNormal over 1,000 sites", _auto_normal_saves, 2),
    "plain-deepcopy": ("copy.deepcopy of a plain 101-module torch model", _plain_deepcopies, 8),
    "plain-load": ("torch.load of a plain 101-module torch model", _plain_loads, 8),
    "tensors-save": ("torch.save of a dict of 1,000 plain tensors", _tensor_saves, 8),
    "modules-100": ("pickle of 100 PyroModules, gc on", _modules(100), 4),
    "modules-16000": ("pickle of 16,000 PyroModules, gc on", _modules(16000), 1),
}
#: Cases that run with the garbage collector on (the linear-growth check).
GC_ON = ("modules-100", "modules-16000")


def run_one(name: str, count: int) -> None:
    """Set up the case's N objects, then do the operation on ``count`` of them,
    inside ``itertools.accumulate``, which is all that is counted."""
    import itertools

    import pyro.contrib.easyguide  # noqa: F401  (every target armed, as in a user's program)

    import pyro_pickle_fix  # noqa: F401  (on or off by PYRO_PICKLE_FIX)

    _, setup, n = CASES[name]
    operations = setup(n)[:count]
    # No collection that one run happens to trigger and the other not.
    gc.collect()
    if name not in GC_ON:
        gc.disable()
    for _ in itertools.accumulate([None, *operations], lambda _, operation: operation()):
        pass


def instructions(name: str, fix: bool) -> int:
    """Instructions spent in all N operations of the case."""
    env = dict(os.environ, PYRO_PICKLE_FIX="1" if fix else "0", PYTHONHASHSEED="0")
    done = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--collect-atstart=no",
            "--toggle-collect=accumulate_next",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            __file__,
            name,
            str(CASES[name][2]),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    (count,) = re.findall(r"Collected\s*:\s*(\d+)", done.stderr)
    return int(count)


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[1].isdigit():
        run_one(argv[0], int(argv[1]))
        return 0
    argv_cases = argv
    import platform

    import pyro
    import torch

    print(
        f"Python {platform.python_version()}, torch {torch.__version__}, "
        f"pyro-ppl {pyro.__version__}, {platform.machine()}; instructions per operation"
    )
    print("| operation | with the fix | without | with / without |")
    print("|---|---|---|---|")
    for name, (label, _, n) in CASES.items():
        if argv_cases and name not in argv_cases:
            continue
        per = {fix: instructions(name, fix) / n for fix in (True, False)}
        print(
            f"| {label} | {per[True] / 1e6:,.2f} M | {per[False] / 1e6:,.2f} M "
            f"| {per[True] / per[False]:.4f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
