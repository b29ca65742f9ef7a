"""multiprocessing pools ship live guides (issue: distributed engines): with the fix
imported on the driver, a ``fork``, ``spawn`` or ``forkserver`` pool leaves the
driver's guide intact; without it, every one of them changes it.

Needs neither Ray nor Dask (those are in test_engines.py), so it runs in every
cell of the matrix.  The workers import the suite's guides, never pyro_pickle_fix:
what is tested is the driver, which pickles each task's arguments.  One pool per
start method per test process, reused by every test, and every wait is bounded.
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest
from guides import build, sample_in_worker, train
from support import GROUP_BUG, assert_same_tensors, run_json, snapshot

TESTS = Path(__file__).parent
KINDS = ["AutoNormal", "AutoGuideList", "EasyGuide"]
METHODS = ["fork", "spawn", "forkserver"]
TIMEOUT = 120  # seconds, for any one task (a spawned worker imports torch and pyro first)
SEED = 7


@pytest.fixture(scope="module")
def pools():
    """method -> a one-worker pool of that start method, made on first use."""
    made: dict[str, multiprocessing.pool.Pool] = {}

    def pool(method: str) -> multiprocessing.pool.Pool:
        if method not in multiprocessing.get_all_start_methods():
            pytest.skip(f"no {method} start method on this platform")
        if method not in made:
            made[method] = multiprocessing.get_context(method).Pool(1)
        return made[method]

    yield pool
    for each in made.values():
        each.terminate()  # a worker that hung past its timeout must not hang the suite
        each.join()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", KINDS)
def test_multiprocessing_leaves_the_drivers_guide_intact(pools, kind, method):
    model_fn, guide, kwargs = build(kind)
    before = snapshot(guide)
    remote = pools(method).apply_async(sample_in_worker, (guide, kwargs, SEED)).get(TIMEOUT)
    assert snapshot(guide) == before, before.diff(snapshot(guide))
    _, twin, _ = build(kind)  # same seed, never shipped
    assert_same_tensors(remote, sample_in_worker(twin, kwargs, SEED))
    train(model_fn, guide, kwargs, 2)  # the driver keeps training


# The same shipping in a fresh interpreter with the fix off: stock pyro changes the
# driver's guide on every start method.
STOCK = """
import json, multiprocessing, sys
sys.path.insert(0, {tests!r})
from guides import build, sample_in_worker, train
from pyro_pickle_fix.diagnostics.snapshot import snapshot
found = {{}}
for method in {methods!r}:
    with multiprocessing.get_context(method).Pool(1) as pool:
        for kind in {kinds!r}:
            model_fn, guide, kwargs = build(kind)
            before = snapshot(guide)
            pool.apply_async(sample_in_worker, (guide, kwargs, 7)).get({timeout})
            changed = before.diff(snapshot(guide))
            try:
                train(model_fn, guide, kwargs, 1)
                error = None
            except Exception as e:
                error = type(e).__name__ + ": " + str(e).splitlines()[0]
            found[kind + " " + method] = {{"changed": changed, "error": error}}
print(json.dumps(found))
"""


def test_without_the_fix_every_pool_changes_the_drivers_guide():
    code = STOCK.format(tests=str(TESTS), methods=METHODS, kinds=KINDS, timeout=TIMEOUT)
    found = run_json(code, fix=False, timeout=600)
    assert sorted(found) == sorted(f"{kind} {method}" for kind in KINDS for method in METHODS)
    for method in METHODS:
        normal, guide_list, easy = (found[f"{kind} {method}"] for kind in KINDS)
        # AutoGuide.__getstate__ clears the live guide's _model (and a child's master).
        assert "guide.__dict__['_model']: tuple -> None" in normal["changed"], normal
        assert any("['master']: weakref -> None" in line for line in guide_list["changed"])
        assert guide_list["error"].startswith("RuntimeError: Multiple sample sites named")
        # PyroModule.__getstate__ pops pyro's weakref from the live Parameters.
        assert any("lost 'unconstrained'" in line for line in easy["changed"]), easy
        # The Group bug, where pyro has it: the live Group holds the guide itself, and
        # the EasyGuide's next step fails.
        swapped = "guide.groups['local'].__dict__['_guide']: weakref -> Easy"
        assert (swapped in easy["changed"]) is GROUP_BUG, easy
        assert (easy["error"] is not None) is GROUP_BUG, easy
