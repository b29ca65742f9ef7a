"""What one interpreter gives for the cases where a method the fix adds or wraps
sits in front of something else in a class's MRO, or where pyro's changes must
land in pyro's order: ``python mro_cases.py`` prints JSON ``{case: outcome}``.

The tests run it with the fix off (stock pyro) and on, and compare.  Each case
builds its own objects (stock changes what it saves) and reports an error as its
type and message, so that one case that fails leaves the others to be compared.
"""

from __future__ import annotations

import copy
import io
import json
import pickle
import sys
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
