"""Overhead of the fix when saving (and loading) a guide: patched / unpatched, paired runs.

    .venv/bin/python benchmarks/serialization.py [--pairs 40]

For each guide and each of ``torch.save`` and ``pickle.dumps``, every pair times
one patched and one unpatched sample of ~250 ms of saves (in random order,
switched with ``unpatch()`` / ``patch()``) in this one process; the ratio of
each pair is patched / unpatched.  Reported: median ratio with min and max, and
the ratio of the best samples.  Before every timed save the guide is run once
(untimed) so that pyro's weakrefs are in place for both: stock pyro strips them
from the live parameters when it saves.  Then the cost of one ``__getstate__()``
call, wrapped and pyro's own.
"""

from __future__ import annotations

import argparse
import gc
import io
import pickle
import platform
import random
import statistics
import time
import weakref
from collections.abc import Callable
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import autoguide as ag

import pyro_pickle_fix
from pyro_pickle_fix.diagnostics import tutorial as scenario


def many_sites_model(sites: int = 1000) -> Callable[[], None]:
    def model() -> None:
        for i in range(sites):
            pyro.sample(f"z{i}", dist.Normal(0.0, 1.0))

    return model


def wide_model(dim: int = 2000) -> None:
    pyro.sample("z", dist.Normal(torch.zeros(dim), 1.0).to_event(1))


def tutorial_guide() -> tuple[Any, Callable[[], None]]:
    data = scenario.make_data()
    guide = scenario.PickleGuide(scenario.model)
    scenario.train(guide, data, epochs=1)
    subsample = torch.arange(scenario.BATCH_SIZE)

    def prepare() -> None:
        # An unpatched save on pyro <= 1.9.1 leaves each Group holding the guide
        # itself (the bug); put the weakref back so the next save starts equal.
        for group in guide.groups.values():
            group._guide = weakref.ref(guide)
        guide(data[:, subsample], subsample, scenario.FULL_SIZE)

    return guide, prepare


def auto_guide(guide: Any) -> tuple[Any, Callable[[], None]]:
    guide()
    return guide, guide


CASES: dict[str, Callable[[], tuple[Any, Callable[[], None]]]] = {
    "(a) tutorial EasyGuide": tutorial_guide,
    "(b) AutoNormal, 1,000 latent sites": lambda: auto_guide(ag.AutoNormal(many_sites_model())),
    "(c) AutoMultivariateNormal, 2,000-dim latent": lambda: auto_guide(
        ag.AutoMultivariateNormal(wide_model)
    ),
}

_saved: dict[int, bytes] = {}


def load(obj: Any) -> object:
    """``torch.load`` of what ``torch.save`` wrote for ``obj`` (written once): the
    fix wraps ``__setstate__`` of every module loaded."""
    data = _saved.get(id(obj))
    if data is None:
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        data = _saved[id(obj)] = buffer.getvalue()
    return torch.load(io.BytesIO(data), weights_only=False)


SAVES: dict[str, Callable[[Any], object]] = {
    "torch.save": lambda obj: torch.save(obj, io.BytesIO()),
    "pickle.dumps": lambda obj: pickle.dumps(obj, pickle.HIGHEST_PROTOCOL),
    "torch.load": load,
}


def use_fix(on: bool) -> None:
    """Switch the fix on or off in this process."""
    if on:
        pyro_pickle_fix.patch()
    else:
        pyro_pickle_fix.unpatch()


def timed(
    save: Callable[[Any], object], obj: Any, prepare: Callable[[], None], patched: bool, saves: int
) -> float:
    """Seconds spent in ``saves`` saves (``prepare`` before each is not timed)."""
    use_fix(patched)
    total = 0.0
    gc.collect()
    for _ in range(saves):
        prepare()
        gc.disable()  # a collection of prepare()'s garbage is not the save's cost
        start = time.perf_counter()
        save(obj)
        total += time.perf_counter() - start
        gc.enable()
    return total


def ratios(
    save: Callable[[Any], object], obj: Any, prepare: Callable[[], None], pairs: int
) -> tuple[list[float], float]:
    """Patched / unpatched per pair, and the ratio of the best sample of each mode
    (noise on a shared machine only ever adds time, so the best samples are the
    steadiest estimate of the fix's own cost)."""
    # Enough saves per sample for ~250 ms of saving, so timer and scheduler noise
    # are small against what is measured.
    once = timed(save, obj, prepare, False, 3) / 3
    timed(save, obj, prepare, True, 3)
    saves = max(3, round(0.25 / once))
    result = []
    best = {True: float("inf"), False: float("inf")}
    for _ in range(pairs):
        order = [True, False]
        random.shuffle(order)
        times = {patched: timed(save, obj, prepare, patched, saves) for patched in order}
        result.append(times[True] / times[False])
        best = {patched: min(best[patched], times[patched]) for patched in best}
    pyro_pickle_fix.patch()
    return result, best[True] / best[False]


def getstate_cost(obj: Any, repeats: int = 2000) -> tuple[float, float]:
    """Microseconds per ``obj.__getstate__()`` call: wrapped, and pyro's own."""
    costs = {}
    for patched in (True, False):
        use_fix(patched)
        samples = []
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(repeats):
                obj.__getstate__()
            samples.append((time.perf_counter() - start) / repeats * 1e6)
        costs[patched] = min(samples)
    pyro_pickle_fix.patch()
    return costs[True], costs[False]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=30)
    args = parser.parse_args()
    print(
        f"Python {platform.python_version()}, torch {torch.__version__}, "
        f"pyro-ppl {pyro.__version__}, {platform.machine()}, {args.pairs} pairs"
    )
    print("| guide | save | patched / unpatched: median | min | max | best / best |")
    print("|---|---|---|---|---|---|")
    costs = []
    for label, make in CASES.items():
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        obj, prepare = make()
        for save_name, save in SAVES.items():
            found, best = ratios(save, obj, prepare, args.pairs)
            print(
                f"| {label} | {save_name} | {statistics.median(found):.3f} "
                f"| {min(found):.3f} | {max(found):.3f} | {best:.3f} |"
            )
        costs.append((label, *getstate_cost(obj)))
    print("\n| guide | one `__getstate__()` call, wrapped | pyro's own | difference |")
    print("|---|---|---|---|")
    for label, wrapped, original in costs:
        print(f"| {label} | {wrapped:.1f} us | {original:.1f} us | {wrapped - original:+.1f} us |")


if __name__ == "__main__":
    main()
