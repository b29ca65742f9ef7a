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
import sys
import weakref

from .._repairs import Bug, Repair
from . import check_copy_rebuild, stock_copy

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

KEY = "unconstrained"  # pyro's link from a constrained to an unconstrained tensor
TENSOR_STATE = "torch._tensor:Tensor.__getstate__"

if sys.version_info >= (3, 11):
    _object_state = object.__getstate__
else:  # what torch's _get_obj_state computes where object has no __getstate__

    def _object_state(obj: Any) -> Any:
        import copyreg

        names = copyreg._slotnames(type(obj))  # type: ignore[attr-defined]
        if names:
            return obj.__dict__, {n: getattr(obj, n) for n in names if hasattr(obj, n)}
        return obj.__dict__


# object.__getstate__ gives None for an empty __dict__ (from Python 3.11 on; torch's
# own fallback before that gives the dict): what stock's state is after its pop.
_EMPTY_IS_NONE = sys.version_info >= (3, 11)


def _without_weakref(attributes: Any) -> Any:
    if type(attributes) is dict and isinstance(attributes.get(KEY), weakref.ref):
        # (The live __dict__, which a training thread may change meanwhile: one copy.)
        attributes = attributes.copy()
        attributes.pop(KEY, None)
        if not attributes and _EMPTY_IS_NONE:
            return None
    return attributes


def tensor_state(following: Any, self: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``Tensor.__getstate__``: the tensor's Python state (the next ``__getstate__``
    in its MRO, a mixin's or ``object``'s) without pyro's weakref (with
    ``__slots__``, the ``(dict, slots)`` pair, its dict without it)."""
    if args or kwargs:
        return following(*args, **kwargs)
    state = _object_state(self) if following is None else following()
    if type(state) is tuple and len(state) == 2:
        return _without_weakref(state[0]), state[1]
    return _without_weakref(state)


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
    tensor_class: Any = None

    def __deepcopy__(self: Any, memo: dict[int, Any]) -> Any:
        nonlocal tensor_class
        if self.is_leaf:
            return original(self, memo)
        if tensor_class is None:
            import torch

            tensor_class = torch.Tensor
        if type(self) is not tensor_class or self.layout is not _strided():
            return original(self, memo)  # a subclass or a sparse tensor: torch's error
        if id(self) in memo:
            return memo[id(self)]
        clone = self.detach().clone().requires_grad_(self.requires_grad)
        memo[id(self)] = clone
        clone.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return clone

    return __deepcopy__


def _strided() -> Any:
    import torch

    return torch.strided


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
