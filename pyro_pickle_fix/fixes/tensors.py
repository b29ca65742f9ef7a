"""Tensors that carry pyro's weakref: written as stock writes them after its pop,
without the pop; and ``copy.deepcopy`` of a guide that holds non-leaf tensors.

pyro keeps ``tensor.unconstrained = weakref.ref(...)`` on constrained parameter
values and on Parameters, and pops it from the *live* tensors before a save
(``PyroModule.__getstate__``, ``ParamStoreDict.get_state``), because pickle cannot
write a weakref.  Here the tensor's pickled state leaves it out instead, through
the pickle protocol's own ``__getstate__``: torch reads a tensor's Python state
by calling ``obj.__getstate__()`` (``torch._utils._get_obj_state``, torch 2.0 to
2.15), and ``torch.Tensor`` defines none of its own, so one added for the patch's
lifetime is what torch calls.  A tensor without the weakref gives what
``object.__getstate__`` gives, and torch takes the very path it takes in stock.
"""

from __future__ import annotations

import copy
import weakref

from .._repairs import Bug, Repair
from . import check_copy_rebuild, stock_copy

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

KEY = "unconstrained"  # pyro's link from a constrained to an unconstrained tensor
TENSOR_STATE = "torch._tensor:Tensor.__getstate__"


def _torch_fallback(obj: Any) -> Any:
    """What torch's ``_get_obj_state`` computes where ``__getstate__`` is None (a
    base sets it so): the live ``__dict__``, with ``__slots__`` the pair."""
    import copyreg

    names = copyreg._slotnames(type(obj))  # type: ignore[attr-defined]
    if names:
        return obj.__dict__, {n: getattr(obj, n) for n in names if hasattr(obj, n)}
    return obj.__dict__


#: How deep in a base's state the weakref is looked for (a state built from the
#: ``__dict__``, held in a tuple or a dict): a bound, so no state is walked whole.
DEPTH = 3


def _without_link(state: Any, link: Any, depth: int = DEPTH) -> Any:
    """``state`` with ``link`` (the tensor's weakref) left out of every dict that
    holds it under pyro's key, in dicts of any dict type and in plain tuples and
    lists, each container on the way copied with its type kept: stock pops it from
    the ``__dict__`` before a base builds its state from it, so what the base
    built from the ``__dict__`` lacks it and everything else is as it was."""
    if depth == 0:
        return state
    if isinstance(state, dict):
        # (It may be the live __dict__, which a training thread may change
        # meanwhile: read from one copy.)
        snapshot = state.copy() if type(state) is dict else dict(state)
        replaced = {}
        for key, value in snapshot.items():
            new = _without_link(value, link, depth - 1)
            if new is not value:
                replaced[key] = new
        if snapshot.get(KEY) is not link and not replaced:
            return state
        clone = snapshot if type(state) is dict else copy.copy(state)
        clone.update(replaced)
        if clone.get(KEY) is link:
            del clone[KEY]
        return clone
    if type(state) in (tuple, list):
        items = [_without_link(item, link, depth - 1) for item in state]
        if any(new is not old for new, old in zip(items, state, strict=True)):
            return type(state)(items)
    return state


def _next_state(obj: Any) -> Any:
    """The class whose ``__getstate__`` comes after ``torch.Tensor``'s in the MRO
    (``object`` from Python 3.11 on, unless a mixin or a user base has one), or
    None where there is none."""
    import torch

    mro = type(obj).__mro__
    for cls in mro[mro.index(torch.Tensor) + 1 :]:
        if "__getstate__" in vars(cls):
            return cls
    return None


def _attributes_without_link(state: Any, link: Any, empty: Any) -> Any:
    """``object.__getstate__``'s or torch's fallback state (the ``__dict__``, or
    with ``__slots__`` the pair) as it is after stock's pop from the ``__dict__``:
    ``empty`` where nothing is left (None from ``object.__getstate__``, the empty
    ``__dict__`` from torch's fallback)."""
    if type(state) is tuple and len(state) == 2:
        return _attributes_without_link(state[0], link, empty), state[1]
    if type(state) is dict and state.get(KEY) is link:
        state = state.copy()  # (the live __dict__: one copy, then nothing read from it)
        state.pop(KEY, None)
        return state or empty
    return state


def tensor_state(following: Any, self: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``Tensor.__getstate__``: the tensor's Python state (the next ``__getstate__``
    in its MRO, a mixin's or ``object``'s; torch's fallback where a base sets it to
    None) without pyro's weakref where stock's pop takes it from: the ``__dict__``,
    or what a base built from it."""
    if args or kwargs:
        return following(*args, **kwargs)
    link = self.__dict__.get(KEY)
    state = _torch_fallback(self) if following is None else following()
    if not isinstance(link, weakref.ref):
        return state
    if following is None:
        return _attributes_without_link(state, link, {})
    if _next_state(self) is object:
        return _attributes_without_link(state, link, None)
    return _without_link(state, link)


def tensor_copy(following: Any, self: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``Tensor.__copy__``: what ``copy.copy`` gives without one (a tensor sharing
    the storage), with pyro's weakref kept where it stood, as stock's copy has it
    (``__reduce_ex__`` reads the state above, which leaves it out)."""
    link = self.__dict__.get(KEY)
    clone, by_reduce_ex = stock_copy(following, self)
    kept = getattr(clone, "__dict__", None)
    if by_reduce_ex and isinstance(link, weakref.ref) and kept is not None and KEY not in kept:
        ordered = {k: link if k == KEY else kept[k] for k in self.__dict__ if k == KEY or k in kept}
        ordered.update(kept)
        kept.clear()
        kept.update(ordered)
    return clone


def make_tensor_deepcopy(original: Callable[..., Any]) -> Callable[..., Any]:
    """``Tensor.__deepcopy__`` that copies a non-leaf tensor as a leaf with the same
    data, ``requires_grad`` and attributes, where torch refuses it (a trained
    AutoIAFNormal's cached transform outputs, an AutoNormal's prototype trace over
    a reparametrised model).  Through deepcopy's memo, a tensor that the copied
    object holds twice is copied once.  Leaves run torch's own method."""
    import torch
    from torch.overrides import has_torch_function

    def __deepcopy__(self: Any, memo: dict[int, Any]) -> Any:
        # A subclass, or a tensor under a __torch_function__ mode, goes to torch
        # before any attribute is read: torch dispatches __deepcopy__ itself, and
        # reading is_leaf first would dispatch one more call to its handler.
        if type(self) is not torch.Tensor or has_torch_function((self,)):
            return original(self, memo)
        if self.is_leaf or self.layout is not torch.strided:
            return original(self, memo)  # a leaf: torch's copy; a sparse tensor: its error
        if id(self) in memo:
            return memo[id(self)]
        clone = self.detach().clone().requires_grad_(self.requires_grad)
        memo[id(self)] = clone
        clone.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return clone

    return __deepcopy__


def check_tensor_state() -> None:
    """That torch pickles a tensor and a Parameter carrying pyro's weakref through
    ``__getstate__``, leaving the live ones as they were; and that ``copy.copy`` can
    be rebuilt as ``Tensor.__copy__`` must (without it, the state would cost copies
    their weakref)."""
    check_copy_rebuild()
    import pickle

    import torch

    for value in (torch.zeros(1), torch.nn.Parameter(torch.zeros(1))):
        value.__dict__[KEY] = link = weakref.ref(value)
        try:
            loaded = pickle.loads(pickle.dumps(value))
        except Exception as error:
            raise RuntimeError(
                f"torch cannot pickle a {type(value).__name__} through it ({error!r})"
            ) from None
        if value.__dict__.get(KEY) is not link or KEY in loaded.__dict__:
            raise RuntimeError(f"torch does not read a {type(value).__name__}'s state through it")


# Only once pyro is imported: nothing else puts pyro's weakref on a tensor.
_PYRO = "pyro.params.param_store"

REPAIRS = (
    Repair(
        TENSOR_STATE,
        (
            Bug(
                "a pyro.param() value or a Parameter carrying pyro's 'unconstrained' "
                "weakref cannot be pickled or torch.saved ('cannot pickle "
                "'weakref.ReferenceType' object') unless pyro first pops it from the "
                "live tensor (the other half of the PyroModule and param-store repairs)",
                # "torch.save fails with .unconstrained weakrefs" (pyro's fix is #3212).
                upstream="https://github.com/pyro-ppl/pyro/issues/3201",
            ),
        ),
        lambda owner: tensor_state,
        how="add",
        trigger=_PYRO,
        check=check_tensor_state,
    ),
    Repair(
        "torch._tensor:Tensor.__copy__",
        (
            # copy.copy reduces a tensor through __reduce_ex__(4), which reads the
            # state above; stock's copy keeps the weakref.
            Bug(
                "part of the tensor-state repair: copy.copy of a tensor carrying pyro's "
                "weakref keeps it, as stock's copy does",
                upstream="https://github.com/pyro-ppl/pyro/pull/3212",
            ),
        ),
        lambda owner: tensor_copy,
        how="add",
        trigger=_PYRO,
        requires=(TENSOR_STATE,),
    ),
    Repair(
        "torch._tensor:Tensor.__deepcopy__",
        (
            Bug(
                "copy.deepcopy of a trained guide that caches non-leaf tensors "
                "(AutoIAFNormal's transforms, an AutoNormal over a reparametrised "
                "model) raises 'Only Tensors created explicitly by the user (graph "
                "leaves) support the deepcopy protocol'",
                # torch's own limit, for any module that keeps a non-leaf attribute.
                upstream="https://github.com/pytorch/pytorch/issues/54580",
            ),
        ),
        make_tensor_deepcopy,
        how="replace",
        trigger=_PYRO,
    ),
)
