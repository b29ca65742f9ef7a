"""AutoGuide: its ``__getstate__`` clears ``_model`` and ``master`` on the live
guide; its ``__setstate__`` re-masters child guides that ``copy.copy`` shares
with the original."""

from __future__ import annotations

from .._repairs import Bug, Repair
from . import computed_state, inherited_state

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    Wrapper = Callable[[Callable[..., Any], Any, tuple[Any, ...], dict[str, Any]], Any]

#: What pyro's AutoGuide.__getstate__ sets to None on the live guide before it asks
#: for the state ("Do not pickle weakrefs"): set in the state instead.
CLEARED = ("_model", "master")


@computed_state
def autoguide_state(owner: Any, instance: Any) -> Any:
    """``AutoGuide.__getstate__`` with ``_model`` and ``master`` None in the state
    it returns, and the live guide left as it was: set whether or not the next
    ``__getstate__`` kept them, as pyro sets them before it asks."""
    state = inherited_state(owner, instance)
    if isinstance(state, dict):  # (a state of another shape is returned as it is)
        state.update(dict.fromkeys(CLEARED))
    return state


def state_argument(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any]:
    """``__setstate__(state)`` called positionally or as ``state=...``: (state, a
    function that calls the bound method with a replacement state)."""
    if args:
        return args[0], lambda method, state: method(state, *args[1:], **kwargs)
    return kwargs.get("state"), lambda method, state: method(**dict(kwargs, state=state))


def adopt_children(owner: type) -> Wrapper:
    """Before an AutoGuide takes its state, child guides that still belong to a
    live master (``copy.copy`` shares them) are replaced by copies of their own."""

    def __setstate__(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        state, call = state_argument(args, kwargs)
        modules = state.get("_modules") if isinstance(state, dict) else None
        if modules:
            owned = _owned_children(owner, modules)
            if owned is not modules:
                state = dict(state, _modules=owned)
        return call(wrapped, state)

    return __setstate__


def _owned_children(autoguide: type, modules: dict[str, Any]) -> dict[str, Any]:
    owned = None
    for name, child in modules.items():
        master = getattr(child, "__dict__", {}).get("master")
        if (
            isinstance(child, autoguide)
            and master is not None
            and master() is not None
            and not _own_protocol(type(child))
        ):
            if owned is None:
                owned = type(modules)(modules)
            owned[name] = _own_copy(child)
    return modules if owned is None else owned


#: What decides how a child guide is made and takes its state: where its class
#: has its own, the child cannot be rebuilt as pyro's are, and stays shared, as stock
#: shares it.
PROTOCOL = ("__new__", "__getstate__", "__setstate__", "__reduce__", "__reduce_ex__", "__copy__")


def _own_protocol(cls: type) -> bool:
    """Whether a class beyond pyro's, torch's and ``object`` defines one of
    :data:`PROTOCOL` for ``cls``."""
    for name in PROTOCOL:
        for base in cls.__mro__:
            if name in vars(base):
                if base is not object and not base.__module__.startswith(("pyro.", "torch.")):
                    return True
                break
    return False


def _own_copy(child: Any) -> Any:
    """A shallow copy of a child guide as stock shares it (its model kept), but
    mastered by no one yet: rebuilt from its ``__dict__``, not from its own
    ``__getstate__``, which clears the model for pickling."""
    cls: Any = type(child)
    clone = cls.__new__(cls)
    clone.__setstate__(dict(vars(child), master=None))
    return clone


REPAIRS = (
    Repair(
        "pyro.infer.autoguide.guides:AutoGuide.__getstate__",
        (
            Bug(
                "sets _model and master to None on the live guide: .model, "
                "laplace_approximation(), append() and nested guides then fail"
            ),
        ),
        autoguide_state,
        reimplements=True,
    ),
    Repair(
        "pyro.infer.autoguide.guides:AutoGuide.__setstate__",
        (
            # copy.copy shares the child guides; re-mastering them to the copy leaves
            # the original's children pointing at a guide that may die.
            Bug(
                "copy.copy re-masters the original's child guides to the copy; once "
                "the copy is freed the original fails"
            ),
        ),
        adopt_children,
    ),
)
