"""Start-up cost of activation through sitecustomize, from paired interleaved runs.

    .venv/bin/python benchmarks/startup.py [--pairs 200] [--pyro-pairs 20]

Builds two identical virtual environments (the package installed from a wheel of
this checkout, torch/pyro/wrapt linked from the running environment), then runs
``install`` in one of them.  Each pair runs the same command once in each, in
random order; the ratio of a pair is with / without activation.  Reported: the
median ratio with min and max, and the median wall times.  It also checks that a
process that never imports pyro imports neither wrapt, torch nor pyro.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from scratch_env import build_wheel, link_dependencies, make_env


def wall(python: str, code: str, env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run([python, "-c", code], env=env, check=True)
    return time.perf_counter() - start


def paired(
    with_: str, without: str, code: str, pairs: int, env: dict[str, str]
) -> dict[str, float]:
    for python in (with_, without):  # warm the page cache and the .pyc files
        wall(python, code, env)
    ratios, times_with, times_without = [], [], []
    for _ in range(pairs):
        order = [with_, without]
        random.shuffle(order)
        times = {python: wall(python, code, env) for python in order}
        ratios.append(times[with_] / times[without])
        times_with.append(times[with_])
        times_without.append(times[without])
    return {
        "median": statistics.median(ratios),
        "min": min(ratios),
        "max": max(ratios),
        "with_ms": statistics.median(times_with) * 1e3,
        "without_ms": statistics.median(times_without) * 1e3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--pyro-pairs", type=int, default=20)
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYRO_PICKLE_FIX", "PYTHON"))}
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(scratch)
        wheel = build_wheel(tmp)
        deps = link_dependencies(tmp / "deps")
        with_, _ = make_env(tmp / "with", wheel, deps)
        without, _ = make_env(tmp / "without", wheel, deps)
        subprocess.run([with_, "-m", "pyro_pickle_fix", "install"], check=True, env=env)

        heavy = json.loads(
            subprocess.run(
                [
                    with_,
                    "-c",
                    "import json, sys; print(json.dumps([sys.modules.get('pyro_pickle_fix')"
                    " is not None, sorted(m for m in sys.modules if m.split('.')[0] in"
                    " ('wrapt', 'torch', 'pyro'))]))",
                ],
                capture_output=True,
                text=True,
                check=True,
                env=env,
            ).stdout
        )
        print(
            f"{platform.node()}: {os.cpu_count()} cores, Python {platform.python_version()}; "
            f"activation loaded: {heavy[0]}; wrapt/torch/pyro imported at start-up: {heavy[1]}"
        )
        print(
            "| command | with / without activation: median | min | max "
            "| median wall time with | without | pairs |"
        )
        print("|---|---|---|---|---|---|---|")
        for code, pairs in (
            ("pass", args.pairs),
            ("import pyro.contrib.easyguide", args.pyro_pairs),
        ):
            found = paired(with_, without, code, pairs, env)
            print(
                f"| `python -c '{code}'` | {found['median']:.3f} | {found['min']:.3f} "
                f"| {found['max']:.3f} | {found['with_ms']:.1f} ms | {found['without_ms']:.1f} ms "
                f"| {pairs} |"
            )


if __name__ == "__main__":
    main()
