"""EasyGuide and its Groups: a Group's ``__getstate__`` swaps its weakref for the
guide in the live ``__dict__``, and pickles a dead one; the per-call plate cache
changes while a save iterates it; ``copy.copy`` shares Groups bound to the
original."""

from __future__ import annotations

import weakref

from .._repairs import PY311, Bug, Repair
from ..errors import DeadReferenceError
from . import check_copy_rebuild, computed_state, inherited_state, stock_copy
from .autoguide import state_argument

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    Wrapper = Callable[[Callable[..., Any], Any, tuple[Any, ...], dict[str, Any]], Any]


@computed_state
def group_state(owner: Any, instance: Any) -> Any:
    """``Group.__getstate__``: the state with the guide in place of the weakref to
    it, in a copy; a dead weakref is an error now, not when the bytes are loaded."""
    state = inherited_state(owner, instance)
    guide = state["_guide"]()  # weakref -> ref
    if guide is None:
        raise DeadReferenceError(
            f"cannot pickle {type(instance).__module__}.{type(instance).__qualname__} "
            f"object at {id(instance):#x}: its attribute '_guide' is a weak reference "
            "to an object that has been garbage collected, so the pickle could not "
            "be loaded. Keep a reference to its EasyGuide and save it together with "
            "this Group (or save the guide itself)."
        )
    state["_guide"] = guide
    return state


@computed_state
def easyguide_state(owner: Any, instance: Any) -> Any:
    """``EasyGuide.__getstate__`` (it has none of its own): what the next one in
    the MRO gives (PyroModule's), with the plate cache copied in one step, so that
    a save never iterates the dict that a training step fills and clears meanwhile."""
    state = inherited_state(owner, instance)
    plates = state.get("plates") if isinstance(state, dict) else None
    if type(plates) is dict:
        state["plates"] = plates.copy()
    return state


def easyguide_copy(owner: type) -> Wrapper:
    """``EasyGuide.__copy__`` (it has none of its own): what ``copy.copy`` gives
    without one, but sharing the plate cache with the original, as stock's copy
    does (the state above gives a save a copy of it)."""

    def __copy__(following: Any, self: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        clone, by_reduce_ex = stock_copy(following, self)
        if not by_reduce_ex:
            return clone
        live, copied = self.__dict__.get("plates"), clone.__dict__.get("plates")
        if type(live) is dict and type(copied) is dict and copied is not live and copied == live:
            clone.__dict__["plates"] = live
        return clone

    return __copy__


def adopt_groups(owner: Any) -> Wrapper:
    """``EasyGuide.__setstate__`` (it has none of its own): Groups bound to another
    live guide (``copy.copy`` shares them) are replaced by copies bound to this one,
    as the Groups of a loaded guide are; then the next ``__setstate__`` in the MRO
    (torch's ``Module.__setstate__``)."""

    def __setstate__(
        following: Any, self: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        state, call = state_argument(args, kwargs)
        groups = state.get("groups") if isinstance(state, dict) else None
        if groups and type(groups) is dict:
            owned = _owned_groups(self, groups)
            if owned is not groups:
                state = dict(state, groups=owned)
        return call(following or self.__dict__.update, state)

    return __setstate__


def _owned_groups(guide: Any, groups: dict[str, Any]) -> dict[str, Any]:
    from pyro.contrib.easyguide.easyguide import Group

    owned = None
    for name, group in groups.items():
        ref = group.__dict__.get("_guide") if isinstance(group, Group) else None
        if isinstance(ref, weakref.ref) and ref() is not None and ref() is not guide:
            if owned is None:
                owned = dict(groups)
            adopted = object.__new__(type(group))
            adopted.__dict__.update(group.__dict__, _guide=weakref.ref(guide))
            owned[name] = adopted
    return groups if owned is None else owned


_MODULE = "pyro.contrib.easyguide.easyguide"

REPAIRS = (
    Repair(
        f"{_MODULE}:Group.__getstate__",
        (
            # The state is the live __dict__ on 3.11+: swapping the weakref for the
            # guide in it makes group.guide call the EasyGuide instead of dereferencing it.
            Bug(
                "replaces the Group's weakref to its EasyGuide with a strong "
                "reference in the live __dict__; the next SVI step fails",
                # Reported upstream as #3430; fixed by #3433 (pyro-ppl 1.9.2).
                upstream="https://github.com/pyro-ppl/pyro/pull/3433",
                pyro_max=(1, 9, 1),
                python_min=PY311,
            ),
            # Pickles "fine" and then fails at load time, far from the cause.
            Bug(
                "a Group whose EasyGuide is gone pickles, and the bytes fail to load "
                "with 'cannot create weak reference to NoneType'",
                # The weakref-to-strong swap for pickling came with #2129.
                upstream="https://github.com/pyro-ppl/pyro/pull/2129",
            ),
        ),
        group_state,
        reimplements=True,
    ),
    Repair(
        f"{_MODULE}:EasyGuide.__getstate__",
        (
            Bug(
                "an EasyGuide saved while a training step ends fails with 'dictionary "
                "changed size during iteration' (its per-call plate cache)"
            ),
        ),
        easyguide_state,
        how="add",
        # Its copy of the plate cache must be undone for copy.copy (the __copy__ below).
        check=check_copy_rebuild,
    ),
    Repair(
        f"{_MODULE}:EasyGuide.__copy__",
        (
            Bug(
                "part of the plate-cache repair: copy.copy of an EasyGuide shares the "
                "plate cache with the original, as stock's copy does"
            ),
        ),
        easyguide_copy,
        how="add",
        requires=(f"{_MODULE}:EasyGuide.__getstate__",),
    ),
    Repair(
        f"{_MODULE}:EasyGuide.__setstate__",
        (
            Bug(
                "copy.copy of an EasyGuide shares its Groups, still bound to the "
                "original guide: the copy runs through the original's groups"
            ),
        ),
        adopt_groups,
        how="add",
    ),
)
