"""PyroModule, the param store, transforms and GuideMessenger: their
``__getstate__`` without what it does to the live object."""

from __future__ import annotations

import weakref

from .._repairs import PY311, Bug, Repair
from . import computed_state, inherited_state
from .tensors import TENSOR_STATE

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    Wrapper = Callable[[Callable[..., Any], Any, tuple[Any, ...], dict[str, Any]], Any]


@computed_state
def pyro_module_state(owner: Any, instance: Any) -> Any:
    """``PyroModule.__getstate__`` without its loop that pops pyro's weakref from
    every live Parameter: the tensors' own state leaves it out of what is written
    (:mod:`~pyro_pickle_fix.fixes.tensors`).  The rest is pyro's line as it is."""
    return getattr(super(owner, instance), "__getstate__", instance.__dict__.copy)()


@computed_state
def param_store_state(owner: Any, instance: Any) -> Any:
    """``ParamStoreDict.get_state`` without its pop of pyro's weakref from every
    live parameter: the same two copies pyro makes, and nothing else."""
    return {"params": instance._params.copy(), "constraints": instance._constraints.copy()}


@computed_state
def transform_state(owner: Any, instance: Any) -> Any:
    """pyro's ``Transform.__getstate__`` (``pyro/distributions/torch_patch.py``),
    which sets every weakref attribute to None in the state: in a copy, not in the
    live ``__dict__`` that ``object.__getstate__`` returns from Python 3.11 on."""
    state = inherited_state(owner, instance)
    for key, value in state.items():
        if isinstance(value, weakref.ref):
            state[key] = None
    return state


@computed_state
def guide_messenger_state(owner: Any, instance: Any) -> Any:
    """pyro-ppl 1.8.6's ``GuideMessenger.__getstate__``, which pops the trace from
    ``super().__getstate__()``: from a copy, not from the live ``__dict__``."""
    state = inherited_state(owner, instance)
    state.pop("trace")
    return state


REPAIRS = (
    Repair(
        "pyro.nn.module:PyroModule.__getstate__",
        (
            Bug(
                "pops the 'unconstrained' weakref from every live Parameter: held "
                "handles fail on .unconstrained() and a training thread races the save",
                # "Clear .unconstrained weakrefs before pickling" (#3212, for #3201).
                upstream="https://github.com/pyro-ppl/pyro/pull/3212",
            ),
        ),
        pyro_module_state,
        reimplements=True,
        requires=(TENSOR_STATE,),
    ),
    Repair(
        "pyro.params.param_store:ParamStoreDict.get_state",
        (
            Bug(
                "pops the 'unconstrained' weakref from every live parameter in the "
                "store (pyro.get_param_store().save())",
                upstream="https://github.com/pyro-ppl/pyro/issues/3201",
            ),
        ),
        param_store_state,
        reimplements=True,
        requires=(TENSOR_STATE,),
    ),
    Repair(
        "torch.distributions.transforms:Transform.__getstate__",
        (
            Bug(
                "pyro's patched Transform.__getstate__ sets weakref attributes to "
                "None in the live __dict__ (object.__getstate__ returns it on 3.11+)",
                python_min=PY311,
                # The cause pyro fixed for the EasyGuide Group only (#3433); its
                # torch_patch is unchanged up to 1.9.2.
                upstream="https://github.com/pyro-ppl/pyro/issues/3430",
            ),
        ),
        transform_state,
        # pyro puts its own method in place when it imports this module.
        trigger="pyro.distributions.torch_patch",
        reimplements=True,
    ),
    Repair(
        "pyro.poutine.guide:GuideMessenger.__getstate__",
        (
            Bug(
                "drops the live trace of a GuideMessenger (state is the live __dict__ on 3.11+)",
                pyro_max=(1, 8, 6),
                python_min=PY311,
                # 1.9.0 copies the __dict__ ("Type annotate TraceMessenger").
                upstream="https://github.com/pyro-ppl/pyro/pull/3299",
            ),
        ),
        guide_messenger_state,
        reimplements=True,
    ),
)
