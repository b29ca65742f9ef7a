"""Every file pyro writes loads through the fix, and gives exactly what torch's own
weights-only unpickler gives for it.

The files are the corpus of ``tests/corpus.py``: written by pyro itself, in a fresh
interpreter with the fix off, once per session.  The oracle is
``torch.load(path, weights_only=True)`` with :func:`pyro_pickle_fix.safe_globals`
allowed; on a torch without ``safe_globals`` (before 2.5), ``weights_only=False``
for these files the test itself had pyro write.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyro
import pyro.distributions
import pyro.optim
import pytest
import torch
from corpus import (
    AUTOGUIDES_ELSEWHERE,
    DISTRIBUTIONS,
    ISSUE_28,
    NOT_IN_THE_CORPUS,
    OPTIMIZERS_ELSEWHERE,
    SCHEDULERS_ELSEWHERE,
    SPECS,
    schedulers_pyro_wraps,
)
from pyro.infer import autoguide
from test_loading import (
    REAL,
    Call,
    G,
    New,
    Pid,
    _refused_optim,
    _refused_store,
    floats,
    store,
    tensor,
    write_file,
)

import pyro_pickle_fix
from pyro_pickle_fix import loader

HERE = Path(__file__).resolve().parent
ALLOWLIST = hasattr(torch.serialization, "safe_globals")  # torch 2.5+


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str | None]]:
    """The corpus, written once a session by stock pyro (the fix off)."""
    directory = tmp_path_factory.mktemp("corpus")
    env = {**os.environ, "PYRO_PICKLE_FIX": "0", "PYTHONWARNINGS": "ignore"}
    subprocess.run(
        [sys.executable, str(HERE / "corpus.py"), str(directory)],
        check=True,
        env=env,
        cwd=HERE,
        timeout=600,
    )
    return directory, json.loads((directory / "manifest.json").read_text())


def torchs_load(path: Path) -> Any:
    """What torch's own weights-only unpickler gives for ``path``."""
    if not ALLOWLIST:
        return torch.load(path, weights_only=False)
    with torch.serialization.safe_globals(pyro_pickle_fix.safe_globals()):
        return torch.load(path, weights_only=True)


def loaded_through_the_fix(kind: str, path: Path) -> Any:
    """What pyro's own load gives with the fix on: the param store's state, or the
    optimizer state waiting for its parameters."""
    assert pyro_pickle_fix.is_patched()
    if kind == "store":
        pyro.clear_param_store()
        store = pyro.get_param_store()
        store.load(str(path))
        return {"params": dict(store._params), "constraints": dict(store._constraints)}
    optim = pyro.optim.Adam({"lr": 0.01})
    optim.load(str(path))
    return dict(optim._state_waiting_to_be_consumed)


class Same:
    """One comparison of two loaded states, storages matched one to one."""

    def __init__(self) -> None:
        self.storages: dict[tuple[str, int], tuple[str, int]] = {}

    def __call__(self, ours: Any, theirs: Any, where: str = "state") -> None:
        assert type(ours) is type(theirs), f"{where}: {type(ours)} != {type(theirs)}"
        if isinstance(ours, torch.Tensor):
            self.tensor(ours, theirs, where)
        elif isinstance(ours, dict):
            assert list(ours) == list(theirs), f"{where}: keys {list(ours)} != {list(theirs)}"
            for key in ours:
                self(ours[key], theirs[key], f"{where}[{key!r}]")
        elif isinstance(ours, (list, tuple)):
            assert len(ours) == len(theirs), f"{where}: {len(ours)} != {len(theirs)} items"
            for index, (mine, other) in enumerate(zip(ours, theirs, strict=True)):
                self(mine, other, f"{where}[{index}]")
        elif isinstance(ours, float) and math.isnan(ours):
            assert math.isnan(theirs), where
        elif isinstance(ours, (str, int, float, bool, type(None), torch.dtype, torch.Size)):
            assert ours == theirs, f"{where}: {ours!r} != {theirs!r}"
        else:  # a constraint: its class (checked above) and its attributes
            self(dict(vars(ours)), dict(vars(theirs)), f"{where}.__dict__")

    def tensor(self, ours: torch.Tensor, theirs: torch.Tensor, where: str) -> None:
        facts = ("dtype", "shape", "requires_grad", "device", "layout")
        for fact in facts:
            assert getattr(ours, fact) == getattr(theirs, fact), f"{where}.{fact}"
        assert ours.stride() == theirs.stride(), f"{where}: strides"
        assert ours.storage_offset() == theirs.storage_offset(), f"{where}: offset"
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0, equal_nan=True, msg=where)
        # Views of one storage stay views of one storage, and no more share one.
        mine = (str(ours.device), ours.untyped_storage().data_ptr())
        other = (str(theirs.device), theirs.untyped_storage().data_ptr())
        if ours.untyped_storage().nbytes():
            assert self.storages.setdefault(mine, other) == other, f"{where}: storage"
        assert (ours.is_conj(), ours.is_neg()) == (theirs.is_conj(), theirs.is_neg()), where
        self(dict(vars(ours)), dict(vars(theirs)), f"{where}.__dict__")


@pytest.mark.parametrize("name", sorted(SPECS))
def test_a_file_pyro_wrote_loads_as_torchs_weights_only_unpickler_loads_it(corpus, name):
    directory, written = corpus
    if written[name] is not None:  # shown by -ra: a file this pyro or torch cannot make
        pytest.skip(f"pyro could not write {name} here: {written[name]}")
    kind, _ = SPECS[name]
    path = directory / f"{name}.pt"
    theirs = torchs_load(path)
    ours = loaded_through_the_fix(kind, path)
    Same()(ours, theirs)


def test_the_four_files_of_issue_28_are_in_the_corpus():
    assert set(ISSUE_28) <= set(SPECS)
    assert SPECS["scheduler-MultiStepLR"][0] == "optim"


def _classes(module: Any, base: type) -> set[str]:
    return {
        name
        for name in module.__all__
        if isinstance(getattr(module, name), type) and issubclass(getattr(module, name), base)
    }


def test_every_distribution_autoguide_optimizer_and_scheduler_has_a_file_or_a_reason():
    distributions = _classes(pyro.distributions, torch.distributions.Distribution)
    assert distributions <= set(DISTRIBUTIONS) | set(NOT_IN_THE_CORPUS)
    guides = _classes(autoguide, object)
    have = {name.removeprefix("autoguide-") for name in SPECS if name.startswith("autoguide-")}
    assert guides <= have | set(AUTOGUIDES_ELSEWHERE)
    optimizers = {
        name
        for name in pyro.optim.pytorch_optimizers.__all__
        if name not in schedulers_pyro_wraps()
    }
    have = {name.removeprefix("optimizer-") for name in SPECS if name.startswith("optimizer-")}
    assert optimizers <= have | set(OPTIMIZERS_ELSEWHERE)
    schedulers = set(schedulers_pyro_wraps())
    have = {name.removeprefix("scheduler-").split("-")[0] for name in SPECS if "scheduler-" in name}
    assert schedulers <= have | set(SCHEDULERS_ELSEWHERE)


def test_every_constraint_class_is_in_some_file(corpus):
    """Each constraint class the loader allows, but those no pyro program can put
    in a file, is in a file of the corpus (as torch loads it)."""
    directory, written = corpus
    unwritten = [name for name, (kind, _) in SPECS.items() if kind == "store" and written[name]]
    if unwritten:
        pytest.skip(f"pyro could not write {unwritten} here")
    found: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, torch.distributions.constraints.Constraint):
            found.add(f"{type(value).__module__}.{type(value).__qualname__}")
            for item in vars(value).values():
                walk(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)

    for name, (kind, _) in SPECS.items():
        if kind == "store" and written[name] is None:
            for constraint in torchs_load(directory / f"{name}.pt")["constraints"].values():
                walk(constraint)
    never = {
        "torch.distributions.constraints.Constraint": "the base class: pyro never saves one",
        "torch.distributions.constraints._Dependent": "a distribution's placeholder argument "
        "constraint, never a support",
        "torch.distributions.constraints._Square": "no support, and no transform reaches it",
        "torch.distributions.constraints._Symmetric": "likewise",
        "torch.distributions.constraints._PositiveSemidefinite": "likewise",
        "torch.distributions.constraints._LowerTriangular": "likewise",
        "pyro.distributions.mixture.MaskedConstraint": "MaskedMixture's support, whose "
        "transform pyro does not define",
        "pyro.distributions.one_one_matching.OneOneMatchingConstraint": "a discrete support",
        "pyro.distributions.one_two_matching.OneTwoMatchingConstraint": "a discrete support",
    }
    allowed = {f"{cls.__module__}.{cls.__qualname__}" for cls in pyro_pickle_fix.safe_globals()}
    missing = allowed - found - set(never)
    assert not missing, missing
    assert set(loader.ALLOWED) >= found


# ---------------------------------------------------------------------------
# What the shapes above accept, and no more: each crafted neighbour is refused.


def _param_with(state: object) -> object:
    hooks = Call(G("collections.OrderedDict"), ())
    return Call(
        G("torch._utils._rebuild_parameter_with_state"),
        (tensor("0", 2, (2,)), True, hooks, state),
    )


@pytest.mark.parametrize(
    "state",
    [
        {"data": 1.0},  # a property of torch's: setattr would run its setter
        {"requires_grad": False},
        {"__class__": 1},
        {"to": 1.0},  # Optimizer.load_state_dict calls it
        ({"a": 1}, {"b": 2}),  # slots: a Parameter has none
    ],
    ids=["data", "requires_grad", "dunder", "a method the load calls", "slots"],
)
def test_a_parameters_attribute_that_is_not_a_plain_scalar_is_refused(tmp_path, state):
    state_ = store({"x": _param_with(state)}, {"x": REAL})
    path = write_file(tmp_path / "p.pt", state_, {"0": floats(1, 2)})
    refused = _refused_store(path, pyro_pickle_fix.UntrustedContentError)
    assert "params['x'] is a Parameter" in str(refused), refused


def _from_type(state: object, func: str = "torch._utils._rebuild_tensor_v2") -> object:
    hooks = Call(G("collections.OrderedDict"), ())
    args = (Pid("0", 2), 0, (2,), (1,), False, hooks)
    return Call(G("torch._tensor._rebuild_from_type_v2"), (G(func), G("torch.Tensor"), args, state))


@pytest.mark.parametrize(
    ("value", "why"),
    [
        # An attribute's tensor is checked like any tensor: here, past its data.
        (_from_type({"mask": tensor("1", 1, (4,))}), "params['x'].mask is a tensor of size (4,)"),
        (_from_type({"_pyro_subsample": {-65: 1}}), "has the dict key -65"),
        (_from_type({"grad": 1.0}), "is a tensor with the attribute 'grad'"),
        (_from_type({"to": 1.0}), "is a tensor with the attribute 'to'"),
        (_from_type({"_is_param": True}), "is a tensor with the attribute '_is_param'"),
        (_from_type({}, "torch._utils._rebuild_parameter"), "which torch.save writes only for"),
        (
            Call(
                G("torch._utils._rebuild_parameter"),
                (_from_type({"a": 1}), True, Call(G("collections.OrderedDict"), ())),
            ),
            "is a Parameter that does not wrap a tensor",
        ),
    ],
    ids=[
        "tensor past its data",
        "key -65",
        "a property",
        "a method the load calls",
        "a Parameter mark",
        "func",
        "wrapped",
    ],
)
def test_a_tensors_attributes_beyond_what_torch_writes_are_refused(tmp_path, value, why):
    path = write_file(
        tmp_path / "t.pt", store({"x": value}, {"x": REAL}), {"0": floats(1, 2), "1": floats(1)}
    )
    refused = _refused_store(path, pyro_pickle_fix.UntrustedContentError)
    assert why in str(refused), refused


def test_an_empty_view_at_an_offset_past_the_file_is_refused(tmp_path):
    hooks = Call(G("collections.OrderedDict"), ())
    far = Call(G("torch._utils._rebuild_tensor_v2"), (Pid("0", 0), 10**9, (0,), (1,), False, hooks))
    path = write_file(tmp_path / "e.pt", store({"x": far}, {"x": REAL}), {"0": b""})
    refused = _refused_store(path, pyro_pickle_fix.UntrustedContentError)
    assert "is an empty tensor at offset 1000000000 of 0 elements" in str(refused), refused


def test_a_none_key_in_a_param_store_file_is_refused(tmp_path):
    path = write_file(
        tmp_path / "n.pt", store({None: tensor("0", 2, (2,))}, {None: REAL}), {"0": floats(1, 2)}
    )
    refused = _refused_store(path, pyro_pickle_fix.UntrustedContentError)
    assert "has a key of type builtins.NoneType" in str(refused), refused


@pytest.mark.parametrize(
    ("counts", "why"),
    [
        ({1: 1.5}, "is a collections.Counter that counts 1 as 1.5"),
        ({1: "x"}, "is a collections.Counter that counts 1 as 'x'"),
        ({0.5: 1}, "has a dict key of type builtins.float"),
    ],
)
def test_a_counter_of_anything_but_int_counts_is_refused(tmp_path, counts, why):
    counter = Call(G("collections.Counter"), (counts,))
    state = {"x": {"scheduler": {"milestones": counter}, "optimizer": {}}}
    path = write_file(tmp_path / "o.pt", state)
    refused = _refused_optim(path, pyro_pickle_fix.UntrustedContentError)
    assert why in str(refused), refused


def test_an_expanded_bound_past_its_parameter_is_refused(tmp_path):
    bound = tensor("1", 1, (10**6,), (0,))
    positive = New(G("torch.distributions.constraints._GreaterThan"), {"lower_bound": bound})
    path = write_file(
        tmp_path / "s.pt",
        store({"x": tensor("0", 1, (1,))}, {"x": positive}),
        {"0": floats(1), "1": floats(0)},
    )
    refused = _refused_store(path, pyro_pickle_fix.UntrustedContentError)
    assert "broadcast together they make 1000000 elements from 2" in str(refused), refused
