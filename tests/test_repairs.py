"""One focused test per repair (or part of one) that no other test needs: each shows
the bug, or the case the declaration guards against, with the fix off, and its
absence with the fix.  They are the killing tests of tests/test_mutants.py.

Where the fix runs in a fresh interpreter (a torch or pyro-ppl that is simulated
before the repairs go in), the mutation check's switch is passed on to it, so that
the interpreter under test is the mutant's.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
from collections.abc import Callable
from pathlib import Path

import pyro
import pytest
import torch
from guides import build
from support import PYRO, run_json

import pyro_pickle_fix
from pyro_pickle_fix.diagnostics import tutorial as scenario

TESTS = str(Path(__file__).parent)
MUTANT = "PYRO_PICKLE_FIX_TEST_MUTANT"
TORCH = tuple(int(part) for part in torch.__version__.split("+")[0].split(".")[:2])
# Stock pyro-ppl <= 1.9.1 loads with torch's default, weights-only from torch 2.6, which
# refuses pyro's constraint classes: the file fails before anything in it is built.
STOCK_LOAD_FAILS = PYRO <= (1, 9, 1) and TORCH >= (2, 6)


def fixed_json(code: str, *, fix: bool = True) -> object:
    """``code`` in a fresh interpreter with the fix as this one has it (the mutant's)."""
    return run_json(code, fix=fix, env={MUTANT: os.environ.get(MUTANT, "")})


def stock_json(code: str) -> object:
    return run_json(code, fix=False)


@contextlib.contextmanager
def unpatched():
    """Stock pyro-ppl in this interpreter: ``unpatch()`` puts back exactly what was."""
    pyro_pickle_fix.unpatch()
    try:
        yield
    finally:
        pyro_pickle_fix.patch()


# ---------------------------------------------------------------------------
# Copies keep what stock's copies keep


def copy_of_a_param_value() -> dict[str, bool]:
    value = pyro.param("x", torch.zeros(2))
    link = value.__dict__["unconstrained"]
    shallow = copy.copy(value)
    assert value.__dict__["unconstrained"] is link
    return {
        "link": shallow.__dict__.get("unconstrained") is link,
        "works": "unconstrained" in shallow.__dict__ and shallow.unconstrained() is value,
        "storage": shallow.data_ptr() == value.data_ptr(),
    }


def test_copy_copy_of_a_pyro_param_value_keeps_pyros_weakref_as_stock_does():
    # What a save writes leaves the weakref out; a copy is no save.
    fixed = copy_of_a_param_value()
    pyro.clear_param_store()
    with unpatched():
        assert fixed == copy_of_a_param_value()


def copy_of_an_easy_guide() -> bool:
    """Whether ``copy.copy`` of a trained EasyGuide shares its plate cache; both run."""
    _, guide, kwargs = build("EasyGuide")
    plates = guide.__dict__["plates"]
    shallow = copy.copy(guide)
    assert guide.__dict__["plates"] is plates
    shallow(**kwargs)
    guide(**kwargs)
    return shallow.__dict__["plates"] is plates


def test_copy_copy_of_an_easy_guide_shares_its_plate_cache_as_stock_does():
    fixed = copy_of_an_easy_guide()
    with unpatched():
        assert fixed == copy_of_an_easy_guide()


# ---------------------------------------------------------------------------
# A save while a training step ends


class TrainingStep:
    """Pickling it ends a training step (the guide's call clears its plate cache):
    what a training thread can do between two items of a save."""

    def __init__(self, step: Callable[[], object] | None = None) -> None:
        self.step = step

    def __reduce__(self):
        if self.step is not None:
            self.step()
        return TrainingStep, ()


def plate_cache_race() -> list:
    """[the save's error, the loaded guide's plate cache, the live one's after]"""
    guide, train_more = scenario.trained_guide()
    # The groups after the cache: the Group bug (stock's step fails once they are
    # written) must not hide this one.
    guide.__dict__["groups"] = guide.__dict__.pop("groups")
    guide.plate("data", scenario.FULL_SIZE, subsample=torch.arange(scenario.BATCH_SIZE))
    guide.plates["step"] = TrainingStep(lambda: train_more(guide))
    buffer = io.BytesIO()
    try:
        torch.save(guide, buffer)
    except RuntimeError as error:
        return [str(error), None, sorted(guide.plates)]
    buffer.seek(0)
    return [None, sorted(torch.load(buffer, weights_only=False).plates), sorted(guide.plates)]


def test_an_easy_guide_saved_while_a_training_step_ends_is_written_as_it_was():
    error, written, live = plate_cache_race()
    assert error is None
    assert written == ["data", "step"]  # the cache as it was when the save began
    assert live == []  # the step ran, and cleared the live cache
    error, _, live = stock_json(
        f"import json, sys; sys.path.insert(0, {TESTS!r})\n"
        "from test_repairs import plate_cache_race\n"
        "print(json.dumps(plate_cache_race()))"
    )
    assert error == "dictionary changed size during iteration"
    assert live == []


# ---------------------------------------------------------------------------
# Where a repair cannot go in, what it is needed by stays stock


# A torch that reads a tensor's Python state from its __dict__, past __getstate__:
# the tensor-state repair cannot work there, and its check says so.  Without it the
# repairs that leave pyro's weakref on live tensors would write it, and fail.
WITHOUT_TENSOR_STATE = """
import io, json, os, pickle, sys, tempfile, warnings
import torch, torch._utils
torch._utils._get_obj_state = lambda obj: obj.__dict__
sys.path.insert(0, {tests!r})
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import pyro_pickle_fix, pyro
    from guides import build
    model_fn, guide, kwargs = build("AutoNormal")
found = {{"warnings": [str(w.message) for w in caught]}}
try:
    loaded = pickle.loads(pickle.dumps(guide))
    pyro.set_rng_seed(0)
    expected = guide(**kwargs)
    pyro.set_rng_seed(0)
    got = loaded(**kwargs)
    found["guide"] = all(torch.equal(expected[k], got[k]) for k in expected)
except Exception as error:
    found["guide"] = type(error).__name__ + ": " + str(error)
pyro.param("p", torch.ones(2))
path = os.path.join(tempfile.mkdtemp(), "store.pt")
try:
    pyro.get_param_store().save(path)
    found["store"] = sorted(torch.load(path, weights_only=False)["params"]) == sorted(
        pyro.get_param_store().keys()
    )
except Exception as error:
    found["store"] = type(error).__name__ + ": " + str(error)
found["wrapped"] = {{
    row.target: row.wrapped for row in pyro_pickle_fix.status().targets
    if row.target.startswith(("torch._tensor.", "pyro.nn.module.", "pyro.params."))
}}
print(json.dumps(found))
"""

#: What goes in only with the tensor-state repair (independently of the table).
NEEDS_TENSOR_STATE = (
    "pyro.nn.module.PyroModule.__getstate__",
    "pyro.params.param_store.ParamStoreDict.get_state",
    "torch._tensor.Tensor.__copy__",
)


def test_where_torch_reads_a_tensors_state_past_getstate_saving_works_as_stock():
    code = WITHOUT_TENSOR_STATE.format(tests=TESTS)
    fixed = fixed_json(code)
    assert fixed["guide"] is True  # pickles, and the loaded copy gives the same samples
    assert fixed["store"] is True
    assert any("Tensor.__getstate__" in message for message in fixed["warnings"]), fixed
    assert fixed["wrapped"]["torch._tensor.Tensor.__getstate__"] is False
    assert {target: fixed["wrapped"][target] for target in NEEDS_TENSOR_STATE} == dict.fromkeys(
        NEEDS_TENSOR_STATE, False
    )
    stock = stock_json(code)
    assert (stock["guide"], stock["store"]) == (fixed["guide"], fixed["store"])


# A pyro-ppl whose EasyGuide defines __getstate__ (here: one that copies the plate
# cache, as the repair does): the repair that adds one cannot go in, and so neither
# can the __copy__ that undoes its copy for copy.copy.
EASYGUIDE_WITH_GETSTATE = """
import copy, json, sys, warnings
sys.path.insert(0, {tests!r})
from pyro.contrib.easyguide.easyguide import EasyGuide
from pyro.nn import PyroModule
def __getstate__(self):
    state = PyroModule.__getstate__(self)
    return dict(state, plates=dict(state["plates"]))
EasyGuide.__getstate__ = __getstate__
import pyro_pickle_fix
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    if {patch}:
        pyro_pickle_fix.patch()
from guides import build
_, guide, kwargs = build("EasyGuide")
shallow = copy.copy(guide)
print(json.dumps({{
    "shared": shallow.__dict__["plates"] is guide.__dict__["plates"],
    "ours": EasyGuide.__dict__["__getstate__"] is __getstate__,
    "warnings": [str(w.message) for w in caught],
}}))
"""


def test_where_pyro_defines_easyguide_getstate_copy_copy_works_as_there_without_the_fix():
    fixed = fixed_json(EASYGUIDE_WITH_GETSTATE.format(tests=TESTS, patch=True), fix=False)
    stock = stock_json(EASYGUIDE_WITH_GETSTATE.format(tests=TESTS, patch=False))
    assert fixed["ours"] is True  # pyro's own method stays
    assert any("EasyGuide" in message for message in fixed["warnings"]), fixed
    assert fixed["shared"] == stock["shared"]


# copy.copy's rebuild from a reduction is copy._reconstruct, a private function
# (no public one does it): the __copy__ repairs build on it only where it behaves
# as they assume.  Here: a Python whose copy.copy no longer has it.
WITHOUT_COPY_REBUILD = """
import copy, json, sys, types, warnings, weakref
sys.path.insert(0, {tests!r})
rebuild = copy._reconstruct
copy.copy = types.FunctionType(copy.copy.__code__, dict(vars(copy), _reconstruct=rebuild))
del copy._reconstruct
import torch, pyro
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import pyro_pickle_fix
    pyro_pickle_fix.patch()
    from guides import build
_, guide, kwargs = build("EasyGuide")
shallow = copy.copy(guide)
shallow(**kwargs)
value = pyro.param("x", torch.zeros(2))
print(json.dumps({{
    "plates shared": shallow.plates is guide.plates,
    "tensor": copy.copy(value).__dict__.get("unconstrained") is value.__dict__["unconstrained"],
    "wrapped": {{row.target: row.wrapped for row in pyro_pickle_fix.status().targets}},
    "patched": pyro_pickle_fix.is_patched(),
    "warnings": [str(w.message) for w in caught],
}}))
"""

#: What builds on copy._reconstruct: a state that copy.copy reads, and the
#: __copy__ that undoes it for a copy.
NEEDS_COPY_REBUILD = {
    "torch._tensor.Tensor.__getstate__": True,
    "pyro.contrib.easyguide.easyguide.EasyGuide.__getstate__": True,
    "torch._tensor.Tensor.__copy__": False,
    "pyro.contrib.easyguide.easyguide.EasyGuide.__copy__": False,
}


def test_copy_rebuild_behaves_as_the_copy_repairs_assume_on_this_python():
    from pyro_pickle_fix.fixes import check_copy_rebuild

    check_copy_rebuild()  # raises where copy._reconstruct no longer rebuilds as copy.copy
    wrapped = {row.target: row.wrapped for row in pyro_pickle_fix.status().targets}
    assert all(wrapped[target] for target in NEEDS_COPY_REBUILD)


def test_where_copy_rebuild_is_gone_what_builds_on_it_stays_stock_with_a_warning():
    fixed = fixed_json(WITHOUT_COPY_REBUILD.format(tests=TESTS), fix=False)
    assert fixed["patched"] is False  # said: those bugs are here, unfixed
    for target, warned in NEEDS_COPY_REBUILD.items():
        assert fixed["wrapped"][target] is False, (target, fixed)
        assert warned is any(target in message for message in fixed["warnings"]), fixed
    stock = stock_json(WITHOUT_COPY_REBUILD.format(tests=TESTS))
    assert (fixed["plates shared"], fixed["tensor"]) == (stock["plates shared"], stock["tensor"])


# ---------------------------------------------------------------------------
# Files that repeat their data


def _repeated(path: Path, state: object) -> int:
    torch.save(state, path)
    return path.stat().st_size


REPEATS = 10**6  # elements of a tensor whose file holds one


def test_an_optimizer_file_that_repeats_its_data_is_refused_and_nothing_is_loaded(tmp_path):
    path = tmp_path / "optim.pt"
    state = {"g": {"state": {0: {"exp_avg": torch.zeros(1).expand(REPEATS)}}, "param_groups": []}}
    size = _repeated(path, state)
    optim = pyro.optim.Adam({"lr": 0.1})
    with pytest.raises(pyro_pickle_fix.UntrustedContentError):
        optim.load(path)
    assert optim._state_waiting_to_be_consumed == {}
    numel = stock_json(
        "import json, pyro\n"
        "optim = pyro.optim.Adam({'lr': 0.1})\n"
        f"optim.load({str(path)!r})\n"
        "x = optim._state_waiting_to_be_consumed['g']['state'][0]['exp_avg']\n"
        "print(json.dumps(x.numel()))"
    )
    assert numel > size  # stock: a tensor far larger than the file (every release)


def test_a_param_store_file_that_repeats_its_data_is_refused_and_nothing_is_loaded(tmp_path):
    path = tmp_path / "store.pt"
    positive = torch.distributions.constraints.positive
    size = _repeated(
        path, {"params": {"x": torch.ones(1).expand(REPEATS)}, "constraints": {"x": positive}}
    )
    store = pyro.get_param_store()
    with pytest.raises(pyro_pickle_fix.UntrustedContentError):
        store.load(path)
    assert list(store.keys()) == []
    found = stock_json(
        "import json, pyro\n"
        "try:\n"
        f"    pyro.get_param_store().load({str(path)!r})\n"
        "    found = pyro.get_param_store()._params['x'].numel()\n"
        "except Exception as e:\n"
        "    found = type(e).__name__\n"
        "print(json.dumps(found))"
    )
    if STOCK_LOAD_FAILS:
        assert found == "UnpicklingError"  # the constraint class, before anything is built
    else:
        assert found > size  # a tensor far larger than the file
    # What pyro saves loads.
    before = pyro.param("x", torch.full((2,), 2.0), constraint=positive).detach().clone()
    store.save(path)
    pyro.clear_param_store()
    store.load(path)
    assert torch.equal(pyro.param("x").detach(), before)
