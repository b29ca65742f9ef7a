"""What one interpreter gives for the cases where a method the fix adds or wraps
sits in front of something else in a class's MRO, or where pyro's changes must
land in pyro's order: ``python mro_cases.py`` prints JSON ``{case: outcome}``.

The tests run it with the fix off (stock pyro) and on, and compare.  Each case
builds its own objects (stock changes what it saves) and reports an error as its
type and message, so that one case that fails leaves the others to be compared.
"""

from __future__ import annotations

import collections
import copy
import io
import json
import pickle
import sys
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

sys.path.insert(0, str(Path(__file__).parent))

import pyro
import pyro.distributions as dist
import torch
from bytes_written import _pickled, _zip_digest
from pyro.contrib.easyguide import EasyGuide
from pyro.infer.autoguide import AutoDelta, AutoGuide, AutoGuideList, AutoNormal
from pyro.optim import PyroOptim
from pyro.params.param_store import ParamStoreDict

import pyro_pickle_fix  # noqa: F401  (activation: PYRO_PICKLE_FIX says whether it is on)

CASES: dict[str, Callable[[], Any]] = {}


def case(function: Callable[[], Any]) -> Callable[[], Any]:
    CASES[function.__name__] = function
    return function


class UnitsMixin:
    """A mixin that keeps its own state and copy, below ``torch.Tensor`` in the MRO."""

    units: str

    def __getstate__(self) -> dict[str, str]:
        return {"units": self.units, "written by": "UnitsMixin.__getstate__"}

    def __copy__(self) -> Any:
        clone = torch.Tensor.as_subclass(self, type(self)).detach().clone()  # type: ignore[arg-type]
        clone.units = self.units + " (copied by the mixin)"
        return clone


class Meters(torch.Tensor, UnitsMixin):
    pass


def _meters() -> Any:
    value = torch.arange(3.0).as_subclass(Meters)
    value.units = "m"
    return value


def _saved(obj: Any) -> str:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return _zip_digest(buffer.getvalue())


@case
def tensor_subclass_with_a_mixin() -> Any:
    loaded = pickle.loads(pickle.dumps(_meters()))
    return {
        "loaded": vars(loaded),
        "copied": vars(copy.copy(_meters())),
        "written": [_pickled(protocol)(_meters()) for protocol in (2, 5)] + [_saved(_meters())],
    }


class Registry(torch.nn.Module):
    """A user base below EasyGuide with a ``__copy__`` of its own."""

    def __copy__(self) -> Any:
        clone = type(self).__new__(type(self))
        clone.__dict__.update(self.__dict__, copied_by="Registry.__copy__")
        return clone


def _model() -> None:
    pyro.sample("a", dist.Normal(0.0, 1.0))
    pyro.sample("b", dist.Normal(0.0, 1.0))


class RegisteredGuide(EasyGuide, Registry):
    def guide(self) -> None:
        self.map_estimate("a")
        self.map_estimate("b")


@case
def easy_guide_with_a_user_base() -> Any:
    guide = RegisteredGuide(_model)
    guide()
    shallow = copy.copy(guide)
    return {
        "copied by": shallow.__dict__.get("copied_by"),
        "plates": shallow.plates is guide.plates,
    }


@case
def method_references() -> Any:
    # Patched (wrapped), added and replaced methods, through the class that
    # defines them and through a subclass, along every protocol.
    references = {
        "ParamStoreDict.load": ParamStoreDict.load,
        "ParamStoreDict.get_state": ParamStoreDict.get_state,
        "PyroOptim.load": PyroOptim.load,
        "AutoGuide.__getstate__": AutoGuide.__getstate__,
        "AutoNormal.__getstate__": AutoNormal.__getstate__,
        "AutoGuide.__setstate__": AutoGuide.__setstate__,
        "Tensor.__deepcopy__": torch.Tensor.__deepcopy__,
    }
    written = {}
    for name, reference in references.items():
        for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
            data = pickle.dumps({"callback": reference}, protocol)
            loaded = pickle.loads(data)["callback"]
            written[f"{name} {protocol}"] = [data.hex(), loaded is reference]
    return written


class LeavesOutWeakrefs(torch.nn.Module):
    """A base below AutoGuide whose state leaves out what pickle cannot write."""

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        return {k: v for k, v in state.items() if not isinstance(v, weakref.ref)}


class Part(AutoDelta, LeavesOutWeakrefs):
    pass


def _guide_list(part: type = AutoDelta) -> Any:
    pyro.clear_param_store()
    guides = AutoGuideList(_model)
    guides.append(part(pyro.poutine.block(_model, expose=["a"])))
    guides.append(AutoDelta(pyro.poutine.block(_model, expose=["b"])))
    guides()
    return guides


@case
def guide_list_child_whose_base_leaves_out_weakrefs() -> Any:
    loaded = pickle.loads(pickle.dumps(_guide_list(Part)))
    return sorted(loaded())


@case
def copy_of_a_guide_list() -> Any:
    guides = _guide_list()
    shallow = copy.copy(guides)
    return {
        "models": [
            _outcome(lambda c=c, o=o: c.model is o.model)
            for c, o in zip(shallow, guides, strict=True)
        ],
        "trains": sorted(shallow()),
        "original trains": sorted(guides()),
    }


@case
def copy_replace() -> Any:
    # Python 3.13's copy.replace, of a guide and of a tensor carrying pyro's weakref.
    replace = getattr(copy, "replace", None)
    if replace is None:
        return "no copy.replace on this Python"
    guide = _guide_list()[0]
    value = pyro.param("x", torch.zeros(2))
    return [_outcome(lambda obj=obj: _described(replace(obj))) for obj in (guide, value)]


class DictState:
    """A base whose state is a dict copied from the ``__dict__`` (empty after stock's pop)."""

    def __getstate__(self) -> Any:
        return dict(self.__dict__)


class NoState:
    """A base that says the object has no ``__getstate__``: torch takes its fallback."""

    __getstate__ = None


class OrderedState:
    """A base whose state is an ``OrderedDict`` built from the ``__dict__``."""

    def __getstate__(self) -> Any:
        return collections.OrderedDict(self.__dict__)


class NestedState:
    """A base whose state holds a copy of the ``__dict__`` one level down."""

    def __getstate__(self) -> Any:
        return {"attributes": dict(self.__dict__), "version": 2}


def _stored_tensor(base: type, **attributes: Any) -> Any:
    """A pyro.param() value of a tensor subclass over ``base``, carrying pyro's
    weakref: what the param store's state and its save write, and what loads."""
    subclass = type(f"Over{base.__name__}", (torch.Tensor, base), {"__module__": __name__})
    globals()[subclass.__name__] = subclass  # (pickle finds the class by name)
    pyro.clear_param_store()
    value = torch.ones(2).as_subclass(subclass)
    vars(value).update(attributes)
    pyro.param("x", value)
    state = pyro.get_param_store().get_state()
    written = [_pickled(protocol)(state) for protocol in (2, 5)] + [_saved(state)]
    loaded = pickle.loads(pickle.dumps(state))["params"]["x"]
    return {"written": written, "loaded": [type(loaded).__name__, sorted(vars(loaded).items())]}


@case
def tensor_state_left_empty() -> Any:
    return {
        base.__name__: _outcome(lambda b=base: _stored_tensor(b)) for base in (DictState, NoState)
    }


@case
def tensor_state_of_another_shape() -> Any:
    return {
        base.__name__: _outcome(lambda b=base: _stored_tensor(b, units="m"))
        for base in (OrderedState, NestedState)
    }


def _tensor_from_list(values: list[float]) -> Any:
    return torch.tensor(values).as_subclass(ReducedTensor)


class ReducedTensor(torch.Tensor):
    """A tensor subclass that ``copy.copy`` copies through its own ``__reduce__``."""

    __reduce_ex__ = None  # type: ignore[assignment]

    def __reduce__(self) -> Any:
        return (_tensor_from_list, (self.tolist(),))


class UncopyableTensor(torch.Tensor):
    __reduce_ex__ = None  # type: ignore[assignment]
    __reduce__ = None  # type: ignore[assignment]


@case
def copy_of_a_tensor_without_reduce_ex() -> Any:
    found = {}
    for cls in (ReducedTensor, UncopyableTensor):
        pyro.clear_param_store()
        value = pyro.param("x", torch.ones(2).as_subclass(cls))
        found[cls.__name__] = _outcome(
            lambda v=value: [type(c := copy.copy(v)).__name__, c.tolist(), sorted(vars(c))]
        )
    return found


class NeedsModel(AutoDelta):
    """A child guide whose ``__new__`` takes the constructor's arguments."""

    def __new__(cls, model: Any, *args: Any, **kwargs: Any) -> Any:
        return super().__new__(cls)


class TupleState(AutoDelta):
    """A child guide with a state of its own shape and the matching ``__setstate__``."""

    def __getstate__(self) -> Any:
        return (super().__getstate__(), "v2")

    def __setstate__(self, state: Any) -> None:
        inner, _version = state
        super().__setstate__(inner)


@case
def copy_of_a_guide_list_with_children_of_their_own() -> Any:
    found = {}
    for part in (NeedsModel, TupleState):
        guides = _guide_list(part)
        found[part.__name__] = _outcome(
            lambda g=guides: [[type(c).__name__, c.master() is g] for c in copy.copy(g)]
        )
    return found


class Logged(torch.Tensor):
    """A tensor subclass whose ``__torch_function__`` records what reaches it."""

    calls: ClassVar[list[str]] = []

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        cls.calls.append(func.__name__)
        return super().__torch_function__(func, types, args, kwargs)


class LoggingMode(torch.overrides.TorchFunctionMode):
    """A ``__torch_function__`` mode that records what reaches it."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.calls.append(func.__name__)
        return func(*args, **(kwargs or {}))


@case
def deepcopy_through_torch_function() -> Any:
    pyro.param("x", torch.ones(2))  # (pyro imported and used: the repairs are in)
    leaf = torch.ones(2).as_subclass(Logged)
    non_leaf = (torch.ones(2, requires_grad=True) * 2).as_subclass(Logged)
    Logged.calls.clear()
    copies = [_outcome(lambda t=t: type(copy.deepcopy(t)).__name__) for t in (leaf, non_leaf)]
    plain = torch.ones(2)  # (a non-leaf one the fix copies, where stock raises)
    with LoggingMode() as mode:
        copies.append(_outcome(lambda: copy.deepcopy(plain).tolist()))
    return {"subclass calls": list(Logged.calls), "mode calls": mode.calls, "copies": copies}


@case
def calls_without_an_instance() -> Any:
    # A wrapped and an added method called through the class, without an instance
    # of it: stock's result or error.
    pyro.param("x", torch.ones(2))  # (pyro imported and used: the repairs are in)
    calls: dict[str, Callable[[], Any]] = {
        "AutoGuide.__getstate__()": lambda: AutoGuide.__getstate__(),
        "Tensor.__getstate__()": lambda: torch.Tensor.__getstate__(),
        "Tensor.__getstate__(1)": lambda: torch.Tensor.__getstate__(1),
        "EasyGuide.__setstate__()": lambda: EasyGuide.__setstate__(),
    }
    return {name: _outcome(lambda c=call: repr(c())) for name, call in calls.items()}


def _outcome(run: Callable[[], Any]) -> Any:
    """What ``run`` returns, or the type and message of what it raised."""
    try:
        return run()
    except Exception as error:
        return f"{type(error).__name__}: {error}"


def _described(obj: Any) -> Any:
    return {"type": type(obj).__qualname__, "attributes": sorted(vars(obj))}


def main() -> None:
    found = {}
    for name, run in CASES.items():
        pyro.clear_param_store()
        found[name] = _outcome(run)
    print(json.dumps(found))


if __name__ == "__main__":
    main()
