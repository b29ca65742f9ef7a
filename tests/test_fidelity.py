"""Invisible except for the bug: the fix writes byte for byte what stock pyro
writes, and leaves everything that is not Pyro's as torch has it."""

from __future__ import annotations

import copy
import io
import json
import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import pyro
import pytest
import torch
from guides import build
from support import run_json

import pyro_pickle_fix
from pyro_pickle_fix import _engine

TESTS = Path(__file__).parent


def written() -> tuple[dict[str, str], dict[str, str]]:
    """What ``bytes_written.py`` reports without and with the fix (run side by side)."""
    runs = []
    for fix in ("0", "1"):
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYRO_PICKLE_FIX")}
        env.update(PYRO_PICKLE_FIX=fix, PYTHONHASHSEED="0")
        runs.append(
            subprocess.Popen(
                [sys.executable, str(TESTS / "bytes_written.py")],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    found = []
    for run in runs:
        out, err = run.communicate(timeout=900)
        assert run.returncode == 0, err
        found.append(json.loads(out.strip().splitlines()[-1]))
    return found[0], found[1]


def test_every_object_along_every_path_is_written_as_stock_writes_it():
    stock, fixed = written()
    assert stock.keys() == fixed.keys()
    # every object x pickle 2-5 and its default, torch.save, dill; and save()
    assert len(stock) == 16 * 7 + 1
    cannot = {key: value for key, value in stock.items() if value.startswith("cannot write")}
    assert cannot == {}, cannot  # stock writes each of these objects (and mutates its twin)
    different = [key for key in stock if stock[key] != fixed[key]]
    assert different == []


class HoldsGroups(torch.nn.Module):
    """A plain module with an attribute named like EasyGuide's."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3, 3)
        self.groups = {"a": torch.nn.Linear(3, 3), "b": [1, 2]}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + self.groups["a"](x)


def _plain_models() -> dict[str, torch.nn.Module]:
    deep = torch.nn.Sequential(
        *[torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Tanh()) for _ in range(33)]
    )
    tied = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Tanh(), torch.nn.Linear(4, 4))
    tied[2].weight = tied[0].weight  # one Parameter in two modules: the copy must share it
    holds = HoldsGroups()
    holds.linear.weight.note = "a Python attribute"  # a tensor __dict__ torch writes
    return {
        "grouped Conv2d": torch.nn.Conv2d(4, 4, 3, groups=2),
        "a module holding a dict named groups": holds,
        "a ~100-module model": deep,
        "tied weights": tied,
    }


INPUTS = {
    "grouped Conv2d": torch.ones(1, 4, 5, 5),
    "a module holding a dict named groups": torch.ones(2, 3),
    "a ~100-module model": torch.ones(2, 4),
    "tied weights": torch.ones(2, 4),
}


def with_and_without_the_fix(work):
    """{True: work(models), False: work(same-seed models)}, the fix on, then off."""
    results = {}
    for fix in (True, False):
        if not fix:
            pyro_pickle_fix.unpatch()
        try:
            assert pyro_pickle_fix.is_patched() is fix  # else both sides run the same code
            torch.manual_seed(0)
            results[fix] = work(_plain_models())
        finally:
            pyro_pickle_fix.patch()
    return results


def _through(path: str, module: torch.nn.Module) -> tuple[str, torch.nn.Module]:
    """(a digest of what ``path`` writes, what it gives back).  copy and deepcopy
    write nothing: the digest is of the pickle of their result."""
    from bytes_written import _pickled, _zip_digest  # the canonical digests, masked

    if path == "torch.save":
        buffer = io.BytesIO()
        torch.save(module, buffer)
        data = buffer.getvalue()
        return _zip_digest(data), torch.load(io.BytesIO(data), weights_only=False)
    copied = copy.deepcopy(module) if path == "deepcopy" else copy.copy(module)
    return _pickled(5)(copied), copied


def _sharing(module: torch.nn.Module, result: torch.nn.Module) -> list[tuple]:
    """For every ``__dict__`` value of every submodule of ``result``, and every item
    of those that are dicts: its place, whether it is the original's object at that
    place, the first place in ``result`` that holds the same object (tied weights,
    shared registries), and the attributes of a tensor's own ``__dict__``."""
    originals = dict(module.named_modules(remove_duplicate=False))
    first: dict[int, tuple] = {}
    rows = []
    for name, sub in result.named_modules(remove_duplicate=False):
        source = vars(originals[name]) if name in originals else {}
        for key in sorted(vars(sub)):
            value = vars(sub)[key]
            places = [((name, key), value, source.get(key, KeyError))]
            if isinstance(value, dict):
                items = source.get(key) if isinstance(source.get(key), dict) else {}
                places += [((name, key, k), v, items.get(k, KeyError)) for k, v in value.items()]
            for place, found, original in places:
                attributes = sorted(vars(found)) if isinstance(found, torch.Tensor) else None
                rows.append(
                    (place, found is original, first.setdefault(id(found), place), attributes)
                )
    return rows


@pytest.mark.slow  # nothing here depends on the pyro-ppl release: once per Python
@pytest.mark.parametrize("path", ["deepcopy", "copy", "torch.save"])
def test_plain_torch_modules_are_untouched_by_the_fix(path):
    import pyro.contrib.easyguide  # noqa: F401  (armed everything there is)
    from support import snapshot

    assert vars(torch.nn.Module)["__setstate__"].__module__ == "torch.nn.modules.module"
    assert not hasattr(vars(torch.nn.Module)["__setstate__"], "__wrapped__")

    def through_each(models: dict[str, torch.nn.Module]) -> dict[str, dict]:
        found = {}
        for name, module in models.items():
            before = snapshot(module, "module")
            digest, result = _through(path, module)
            found[name] = {
                "written": digest,  # torch.save's bytes, or the result pickled
                "outputs": result(INPUTS[name]).detach(),
                "attributes": sorted(vars(result)),
                "sharing": _sharing(module, result),
                "live changed": before.diff(snapshot(module, "module")),
            }
        return found

    results = with_and_without_the_fix(through_each)
    assert results[True].keys() == results[False].keys() == INPUTS.keys()
    for name, with_fix in results[True].items():
        without = results[False][name]
        assert without["live changed"] == [], name  # torch leaves the live module as it was
        assert torch.equal(with_fix.pop("outputs"), without.pop("outputs")), name
        for what in with_fix:
            assert with_fix[what] == without[what], (name, what)


@pytest.mark.slow
def test_torch_save_of_plain_modules_writes_the_same_records():
    from bytes_written import _zip_digest

    def digests_of(models: dict[str, torch.nn.Module]) -> dict[str, str]:
        found = {}
        for name, module in models.items():
            buffer = io.BytesIO()
            torch.save(module, buffer)
            found[name] = _zip_digest(buffer.getvalue())
        return found

    digests = with_and_without_the_fix(digests_of)
    assert digests[True] == digests[False]


def test_setstate_wrappers_accept_the_state_as_a_keyword():
    _, guide, _ = build("AutoGuideList")
    state = guide.__getstate__()
    fresh = object.__new__(type(guide))
    fresh.__setstate__(state=state)
    assert all(
        child.master() is fresh
        for child in fresh.modules()
        if child is not fresh and hasattr(child, "master")
    )
    _, easy, easy_kwargs = build("EasyGuide")
    other = object.__new__(type(easy))
    other.__setstate__(state=easy.__getstate__())
    assert all(group.guide is other for group in other.groups.values())
    other(**easy_kwargs)


@pytest.mark.parametrize("kind", ["AutoNormal", "EasyGuide"])
def test_copy_copy_shares_what_stock_shares(kind):
    # As stock's shallow copy: the same registries and plate caches as the original
    # (an EasyGuide's copy is the one a save would give a snapshot of the cache).
    _, guide, _ = build(kind)
    guide.plates["a cache entry"] = None
    shallow = copy.copy(guide)
    for name in ("_parameters", "_modules", "_buffers", "plates"):
        assert shallow.__dict__[name] is guide.__dict__[name], name
    if kind == "AutoNormal":
        assert shallow.__dict__["_model"] is None  # stock's state drops it for pickling
        assert guide.model is not None
    loaded = pickle.loads(pickle.dumps(guide))
    assert sorted(loaded.plates) == sorted(guide.plates) and loaded.plates is not guide.plates


# PYRO_PICKLE_FIX decides whether the imported fix is on.
COPY_KEEPS_WEAKREF = (
    "import copy, json, weakref, torch, pyro, pyro_pickle_fix\n"
    "p = torch.nn.Parameter(torch.zeros(2)); p.unconstrained = weakref.ref(p)\n"
    "x = pyro.param('x', torch.zeros(2))\n"
    "print(json.dumps([copy.copy(p).unconstrained() is p, copy.copy(x).unconstrained() is x]))"
)


def test_copy_copy_of_a_parameter_keeps_pyros_weakref_as_stock_does():
    found = run_json(COPY_KEEPS_WEAKREF, fix=True)
    stock = run_json(COPY_KEEPS_WEAKREF, fix=False)
    assert found == stock == [True, True]


def test_is_patched_and_status_change_nothing():
    found = run_json(
        "import json, sys, pyro_pickle_fix\n"
        "from pyro_pickle_fix import _engine\n"
        "answers = [pyro_pickle_fix.is_patched(), pyro_pickle_fix.status().active]\n"
        "print(json.dumps([answers, _engine._armed, _engine._installed == {},"
        " 'pyro' in sys.modules, 'wrapt' in sys.modules]))",
        fix=None,
    )
    assert found == [[True, True], False, True, False, False]


def test_unpatch_reports_a_wrapper_someone_put_on_top_of_ours():
    import wrapt
    from pyro.infer.autoguide.guides import AutoGuide

    ours = vars(AutoGuide)["__getstate__"]
    outer = wrapt.FunctionWrapper(
        ours, lambda wrapped, instance, args, kwargs: wrapped(*args, **kwargs)
    )
    AutoGuide.__getstate__ = outer
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pyro_pickle_fix.unpatch()
        messages = [
            str(w.message) for w in caught if w.category is pyro_pickle_fix.PyroPickleFixWarning
        ]
        assert len(messages) == 1, messages
        assert "could not unpatch pyro.infer.autoguide.guides.AutoGuide.__getstate__" in messages[0]
        rows = {row.target: row for row in pyro_pickle_fix.status().targets}
        row = rows["pyro.infer.autoguide.guides.AutoGuide.__getstate__"]
        assert row.wrapped is True and "could not remove it" in row.note
        assert vars(AutoGuide)["__getstate__"] is outer  # theirs is left in place
        assert not pyro_pickle_fix.is_patched()
    finally:
        AutoGuide.__getstate__ = ours.__wrapped__
        _engine._installed.pop("pyro.infer.autoguide.guides:AutoGuide.__getstate__", None)
        pyro_pickle_fix.patch()
    assert pyro_pickle_fix.is_patched()
    assert pyro.get_param_store() is not None


DILL_CHECKPOINT = """
import io, json, pickletools, zipfile
import dill, pyro, torch
import pyro.distributions as dist
from pyro.infer import SVI, Trace_ELBO
import pyro_pickle_fix  # noqa: F401  (PYRO_PICKLE_FIX decides)

torch.manual_seed(0)
net = torch.nn.Linear(3, 1)
x, y = torch.randn(10, 3), torch.randn(10)

def model():
    pyro.module("m", net)
    pyro.sample("obs", dist.Normal(net(x).squeeze(-1), 1.0).to_event(1), obs=y)

def guide():
    pyro.module("m", net)

SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO()).step()
buffer = io.BytesIO()
torch.save(net, buffer, pickle_module=dill)
with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as archive:
    data = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
names = sorted({arg for op, arg, _ in pickletools.genops(data) if op.name == "GLOBAL"})
buffer.seek(0)
loaded = torch.load(buffer, pickle_module=dill, weights_only=False)
print(json.dumps({
    "globals": names,
    "live_weakrefs": ["unconstrained" in p.__dict__ for p in net.parameters()],
    "loaded": [[p.tolist(), "unconstrained" in p.__dict__] for p in loaded.parameters()],
}))
"""


def test_under_dill_the_fix_leaves_out_the_weakref_that_stock_writes():
    pytest.importorskip("dill")
    stock = run_json(DILL_CHECKPOINT, fix=False)
    fixed = run_json(DILL_CHECKPOINT, fix=True)
    # dill can write a weakref: stock writes pyro's, and each parameter twice over ...
    assert "dill._dill _create_weakref" in stock["globals"]
    assert "torch._utils _rebuild_parameter_with_state" in stock["globals"]
    # ... the fix writes the parameters as stock writes them after its pop ...
    assert "dill._dill _create_weakref" not in fixed["globals"]
    assert "torch._utils _rebuild_parameter_with_state" not in fixed["globals"]
    assert "torch._utils _rebuild_parameter" in fixed["globals"]
    # ... both files give back the same parameters, neither with a weakref ...
    assert fixed["loaded"] == stock["loaded"]
    assert all(not weakref for _, weakref in stock["loaded"])
    # ... and the live parameters keep theirs (stock's plain module was never popped).
    assert fixed["live_weakrefs"] == stock["live_weakrefs"] == [True, True]
