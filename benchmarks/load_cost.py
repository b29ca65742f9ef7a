"""Cost of the fix's own loader against stock's weights-only ``torch.load``, paired runs.

    .venv/bin/python benchmarks/load_cost.py [--pairs 15] [--megabytes 100] [--params 100]

Writes, as pyro does, a param store of about ``--megabytes`` MB of parameters
(AutoNormal-like: ``--params`` parameters, 100 by default, half of them
constrained positive) and the Adam
state for the same parameters after two steps (``PyroOptim.save``: twice the
bytes).  Each pair loads each file once with the fix's loader
(``pyro_pickle_fix.loader.load_state`` / ``load_optim_state``, what the patched
``ParamStoreDict.load`` / ``PyroOptim.load`` run) and once with stock's
``torch.load(f, weights_only=True)`` (for the store, with
``pyro_pickle_fix.safe_globals()`` allowed, as stock 1.9.1 would need), in random
order, from a warm page cache.  Reported: the ratio fix / stock per pair (median,
min, max) and the median wall time of each.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("PYRO_PICKLE_FIX", "0")  # load the loader only; time stock torch

import pyro
import torch

from pyro_pickle_fix import loader, safe_globals


def write_files(folder: Path, megabytes: int, count: int) -> tuple[Path, Path]:
    pyro.clear_param_store()
    numel = max(megabytes * 2**20 // 4 // count, 1)
    positive = torch.distributions.constraints.positive
    for index in range(count):
        constraint = positive if index % 2 else torch.distributions.constraints.real
        pyro.param(f"AutoNormal.p{index}", torch.rand(numel) + 0.5, constraint=constraint)
    store = pyro.get_param_store()
    optim = pyro.optim.Adam({"lr": 0.01})
    for _ in range(2):
        params = list(store._params.values())
        loss = sum((p * p).sum() for p in params)
        assert isinstance(loss, torch.Tensor)
        loss.backward()
        optim(params)
        for p in params:
            p.grad = None
    store_path, optim_path = folder / "params.pt", folder / "optim.pt"
    store.save(store_path)
    optim.save(optim_path)
    pyro.clear_param_store()
    return store_path, optim_path


def stock_store(path: Path) -> Any:
    with open(path, "rb") as file, torch.serialization.safe_globals(safe_globals()):
        return torch.load(file, weights_only=True)


def stock_optim(path: Path) -> Any:
    with open(path, "rb") as file:
        return torch.load(file, weights_only=True)


def timed(load: Callable[[Path], Any], path: Path) -> float:
    start = time.perf_counter()
    state = load(path)
    elapsed = time.perf_counter() - start
    del state
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=15)
    parser.add_argument("--megabytes", type=int, default=100)
    parser.add_argument("--params", type=int, default=100)
    args = parser.parse_args()
    print(
        f"Python {platform.python_version()}, torch {torch.__version__}, "
        f"pyro-ppl {pyro.__version__}, {os.cpu_count()} CPUs"
    )
    with tempfile.TemporaryDirectory() as folder:
        store_path, optim_path = write_files(Path(folder), args.megabytes, args.params)
        cases = {
            "param store": (store_path, loader.load_state, stock_store),
            "optimizer": (optim_path, loader.load_optim_state, stock_optim),
        }
        print(
            "| file | size | fix / stock: median | min | max | median fix | median stock | pairs |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for name, (path, ours, stock) in cases.items():
            ours(path), stock(path)  # warm the page cache and both code paths
            ratios, fix_times, stock_times = [], [], []
            for _ in range(args.pairs):
                order = [("fix", ours), ("stock", stock)]
                random.shuffle(order)
                got = {label: timed(load, path) for label, load in order}
                fix_times.append(got["fix"])
                stock_times.append(got["stock"])
                ratios.append(got["fix"] / got["stock"])
            size = path.stat().st_size / 2**20
            print(
                f"| {name} | {size:.0f} MB | {statistics.median(ratios):.3f} | "
                f"{min(ratios):.3f} | {max(ratios):.3f} | "
                f"{statistics.median(fix_times) * 1000:.1f} ms | "
                f"{statistics.median(stock_times) * 1000:.1f} ms | {args.pairs} |"
            )


if __name__ == "__main__":
    main()
