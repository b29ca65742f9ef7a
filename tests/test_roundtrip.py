"""The other half of a checkpoint: loading what was saved, safely, on every torch
in the matrix (param-store files, pyro.param values, files read without us)."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import pyro
import pytest
import torch
from guides import build, train
from scratch_env import bare_env, link_dependencies
from support import PYRO, assert_same_tensors, run_json, stock_error

import pyro_pickle_fix

TORCH = tuple(int(part) for part in torch.__version__.split("+")[0].split(".")[:2])
ALLOWLIST = hasattr(torch.serialization, "safe_globals")  # torch 2.5+
# Stock pyro-ppl <= 1.9.1 loads with torch's default, weights-only from torch 2.6.
STOCK_LOAD_FAILS = PYRO <= (1, 9, 1) and TORCH >= (2, 6)

SAVE_AND_LOAD = """
import json, sys, torch, pyro
import pyro_pickle_fix  # on or off by PYRO_PICKLE_FIX
sys.path.insert(0, {tests!r})
from guides import build
build("AutoNormal")
pyro.param("positive", torch.ones(2), constraint=torch.distributions.constraints.positive)
store = pyro.get_param_store()
store.save({path!r})
before = {{name: store._params[name].detach().clone() for name in store._params}}
pyro.clear_param_store()
try:
    store.load({path!r}, map_location="cpu")
    error = None
except Exception as e:
    error = type(e).__name__ + ": " + str(e)
print(json.dumps(error))
"""


@pytest.mark.parametrize("fix", [False, True])
def test_param_store_save_then_load(tmp_path, fix):
    code = SAVE_AND_LOAD.format(tests=str(Path(__file__).parent), path=str(tmp_path / "p.pt"))
    error = run_json(code, fix=fix)
    if fix or not STOCK_LOAD_FAILS:
        assert error is None
    else:
        assert error.startswith("UnpicklingError: Weights only load failed"), error
        assert "GLOBAL torch.distributions.constraints." in error, error


def test_loaded_store_has_the_values_and_constraints_and_trains(tmp_path):
    model_fn, _guide, kwargs = build("AutoNormal")
    pyro.param("positive", torch.ones(2), constraint=torch.distributions.constraints.positive)
    store = pyro.get_param_store()
    values = {name: store[name].detach().clone() for name in store}
    constraints = {name: type(c) for name, c in store._constraints.items()}
    path = tmp_path / "params.pt"
    store.save(path)
    pyro.clear_param_store()
    store.load(path, map_location="cpu")
    assert {name: store[name].detach() for name in store}.keys() == values.keys()
    assert_same_tensors({name: store[name].detach() for name in store}, values)
    assert {name: type(c) for name, c in store._constraints.items()} == constraints
    fresh = pyro.infer.autoguide.AutoNormal(model_fn)
    fresh(**kwargs)  # takes its parameters from the loaded store
    assert torch.equal(fresh.locs.g0.detach(), values["AutoNormal.locs.g0"])
    loaded = store._params["AutoNormal.locs.g0"]
    losses = train(model_fn, fresh, kwargs, 2)
    assert all(torch.isfinite(torch.tensor(loss)) for loss in losses)
    # Training moved the loaded tensor itself: the guide trains the store's parameters.
    assert store._params["AutoNormal.locs.g0"] is loaded
    assert not torch.equal(loaded.detach(), values["AutoNormal.locs.g0"])


class Sneaky(torch.distributions.constraints.Constraint):
    """A constraint whose unpickling runs a shell command."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


class MyPositive(torch.distributions.constraints.Constraint):
    """A user's own constraint: a class plus a __dict__, as pyro's are."""

    def __init__(self, floor: float = 0.0) -> None:
        self.floor = floor

    def check(self, value):
        return value > self.floor


@torch.distributions.transform_to.register(MyPositive)
def _to_my_positive(constraint: MyPositive) -> torch.distributions.transforms.Transform:
    return torch.distributions.transforms.ComposeTransform(
        [
            torch.distributions.transforms.ExpTransform(),
            torch.distributions.transforms.AffineTransform(constraint.floor, 1.0),
        ]
    )


def _malicious_file(path: Path, marker: Path) -> None:
    torch.save({"params": {"x": torch.zeros(2)}, "constraints": {"x": Sneaky(str(marker))}}, path)


@pytest.mark.skipif(not ALLOWLIST, reason="this torch has no weights-only allowlist: stock load")
def test_a_malicious_file_is_refused_and_none_of_it_runs(tmp_path):
    path, marker = tmp_path / "evil.pt", tmp_path / "ran"
    _malicious_file(path, marker)
    with pytest.raises(pyro_pickle_fix.UntrustedGlobalError) as caught:
        pyro.get_param_store().load(path)
    assert not marker.exists()
    assert isinstance(caught.value, pickle.UnpicklingError)
    assert caught.value.name in ("posix.system", "os.system")
    message = str(caught.value)
    assert "refused to load" in message
    assert "add_safe_globals" not in message  # never advice to allow a code-running global
    assert "weights_only=False" in message  # how to load a file the user trusts
    assert list(pyro.get_param_store().keys()) == []


def test_stock_1_9_2_runs_the_code_in_a_param_store_file(tmp_path):
    path, marker = tmp_path / "evil.pt", tmp_path / "ran"
    _malicious_file(path, marker)
    found = stock_error(f"pyro.get_param_store().load({str(path)!r})")
    # 1.9.2 trusts every file; older releases trust it where torch.load does (< 2.6).
    assert marker.exists() is (PYRO >= (1, 9, 2) or TORCH < (2, 6)), found


@pytest.mark.skipif(not ALLOWLIST, reason="this torch has no weights-only allowlist: stock load")
def test_a_users_constraint_loads_once_allowed(tmp_path):
    store = pyro.get_param_store()
    pyro.param("x", torch.ones(2) * 2, constraint=MyPositive(1.0))
    path = tmp_path / "mine.pt"
    store.save(path)
    pyro.clear_param_store()
    with pytest.raises(pyro_pickle_fix.UntrustedGlobalError) as caught:
        store.load(path)
    assert caught.value.name == f"{__name__}.MyPositive"
    assert "add_safe_globals([MyPositive])" in str(caught.value)
    torch.serialization.add_safe_globals([MyPositive])
    try:
        store.load(path)
    finally:
        torch.serialization.clear_safe_globals()
    assert torch.equal(pyro.param("x").detach(), torch.ones(2) * 2)
    assert store._constraints["x"].floor == 1.0


@pytest.mark.skipif(not ALLOWLIST, reason="this torch has no weights-only allowlist")
def test_safe_globals_loads_a_file_that_embeds_the_store(tmp_path):
    build("AutoNormal")
    pyro.param("positive", torch.ones(2), constraint=torch.distributions.constraints.positive)
    path = tmp_path / "checkpoint.pt"
    torch.save({"step": 3, "params": pyro.get_param_store().get_state()}, path)
    classes = pyro_pickle_fix.safe_globals()
    assert torch.distributions.constraints._GreaterThan in classes
    assert all(c.__module__.split(".")[0] in ("torch", "pyro") for c in classes)
    assert any(c.__module__.startswith("pyro.") for c in classes)
    with torch.serialization.safe_globals(classes):
        loaded = torch.load(path, weights_only=True)
    assert loaded["step"] == 3 and set(loaded["params"]["params"]) >= {"positive"}


def _param_values():
    return {
        "loc": pyro.param("loc", torch.arange(3.0)),
        "scale": pyro.param(
            "scale", torch.ones(2), constraint=torch.distributions.constraints.positive
        ),
    }


class HoldsAParam:
    def __init__(self) -> None:
        self.scale = pyro.param("held", torch.ones(2))


@pytest.mark.parametrize("how", ["pickle", "torch.save"])
def test_pyro_param_values_pickle_and_keep_their_weakref(how):
    values = _param_values()
    live = {name: value.__dict__["unconstrained"] for name, value in values.items()}
    holder = HoldsAParam()
    if how == "pickle":
        loaded, held = pickle.loads(pickle.dumps(values)), pickle.loads(pickle.dumps(holder))
    else:
        buffer = io.BytesIO()
        torch.save({"values": values, "holder": holder}, buffer)
        both = torch.load(io.BytesIO(buffer.getvalue()), weights_only=False)
        loaded, held = both["values"], both["holder"]
    for name, value in values.items():
        assert value.__dict__["unconstrained"] is live[name]  # the live tensor keeps it
        assert torch.equal(loaded[name], value.detach())
        assert "unconstrained" not in loaded[name].__dict__
    assert torch.equal(held.scale, holder.scale)


def test_pyro_param_values_load_weights_only_with_nothing_allowed(tmp_path):
    values = _param_values()
    torch.save(values, tmp_path / "values.pt")
    loaded = torch.load(tmp_path / "values.pt", weights_only=True)
    assert_same_tensors(loaded, {name: value.detach() for name, value in values.items()})


def test_written_bytes_are_those_of_the_tensor_without_the_weakref():
    value = pyro.param("loc", torch.arange(3.0))
    twin = value.detach().clone().requires_grad_(value.requires_grad)
    assert value.__dict__["unconstrained"]() is value
    for protocol in range(2, 6):
        from bytes_written import _pickled

        assert _pickled(protocol)(value) == _pickled(protocol)(twin)


def test_stock_cannot_pickle_a_pyro_param_value():
    found = run_json(
        "import json, pickle, io, torch, pyro\n"
        "x = pyro.param('x', torch.zeros(2))\n"
        "errors = []\n"
        "for write in (pickle.dumps, lambda v: torch.save(v, io.BytesIO())):\n"
        "    try:\n"
        "        write({'x': x}); errors.append(None)\n"
        "    except Exception as e:\n"
        "        errors.append(type(e).__name__ + ': ' + str(e))\n"
        "print(json.dumps(errors))",
        fix=False,
    )
    assert found == ["TypeError: cannot pickle 'weakref.ReferenceType' object"] * 2 or all(
        "weakref" in error for error in found
    ), found


def test_files_written_with_the_fix_load_where_it_is_not_installed(tmp_path):
    import subprocess

    _model_fn, guide, _kwargs = build("AutoNormal")
    values = _param_values()
    torch.save(guide, tmp_path / "guide.pt")
    pyro.get_param_store().save(tmp_path / "store.pt")
    torch.save(values, tmp_path / "values.pt")
    deps = link_dependencies(tmp_path / "deps")
    python, _ = bare_env(tmp_path / "env", deps, Path(__file__).parent)
    code = (
        "import importlib.util, json, torch, pyro\n"
        "assert importlib.util.find_spec('pyro_pickle_fix') is None\n"
        f"guide = torch.load({str(tmp_path / 'guide.pt')!r}, weights_only=False)\n"
        "pyro.set_rng_seed(0)\n"
        "sample = guide()\n"
        f"values = torch.load({str(tmp_path / 'values.pt')!r}, weights_only=False)\n"
        f"state = torch.load({str(tmp_path / 'store.pt')!r}, weights_only=False)\n"
        "values = {k: v.tolist() for k, v in values.items()}\n"
        "print(json.dumps({'sites': sorted(sample), 'values': values,"
        " 'params': sorted(state['params'])}))"
    )
    done = subprocess.run(
        [python, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    import json

    found = json.loads(done.stdout.strip().splitlines()[-1])
    pyro.set_rng_seed(0)
    assert found["sites"] == sorted(guide())
    assert found["values"] == {k: v.tolist() for k, v in values.items()}
    assert found["params"] == sorted(pyro.get_param_store().keys())
