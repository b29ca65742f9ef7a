"""The repairs, one module per family, each declaring its ``REPAIRS`` beside the
code that fixes them: a bug retired upstream is one entry (and its tests) to
delete.  :mod:`pyro_pickle_fix._engine` installs them in this order.

Every ``__getstate__`` fix here computes what pyro's method returns **without
calling it**: pyro's methods change the live object (they pop a weakref from live
tensors, set ``_model`` to None, swap a weakref for its target in the live
``__dict__``), so the fix starts from what the next ``__getstate__`` in the MRO
gives, exactly as pyro's method asks for it, and applies pyro's changes to that
state, never to the object.  Nothing is copied but the top-level dict that pyro's
changes would otherwise land in, so the stream shares what stock's shares.
"""

from __future__ import annotations

import collections
import copy
import copyreg

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    Wrapper = Callable[[Callable[..., Any], Any, tuple[Any, ...], dict[str, Any]], Any]

#: The families, in the order they go in (what a repair requires comes first).
FAMILIES = ("tensors", "modules", "autoguide", "easyguide", "loading")


def inherited_state(owner: type, obj: Any) -> Any:
    """``getattr(super(), "__getstate__", self.__dict__.copy)()`` as pyro's methods
    of ``owner`` call it, but never the live ``__dict__`` itself (from Python 3.11
    on, ``object.__getstate__`` returns it): a copy of it where it is, so that what
    is changed in the state stays out of the object."""
    state = getattr(super(owner, obj), "__getstate__", obj.__dict__.copy)()
    if state is obj.__dict__:
        state = state.copy()
    return state


def computed_state(compute: Callable[[Any, Any], Any]) -> Callable[[Any], Wrapper]:
    """A ``wrap`` fix for a method that takes no arguments (``__getstate__``,
    ``get_state``) from ``compute(owner, instance)``, which returns the state: called
    with arguments, or through the class without an instance, pyro's own method
    runs (and raises its ``TypeError``)."""

    def make(owner: Any) -> Wrapper:
        def wrapper(
            wrapped: Callable[..., Any],
            instance: Any,
            args: tuple[Any, ...],
            kwargs: dict[str, Any],
        ) -> Any:
            if args or kwargs or instance is None:  # (through the class, no instance)
                return wrapped(*args, **kwargs)
            return compute(owner, instance)

        wrapper.__doc__ = compute.__doc__
        return wrapper

    return make


def stock_copy(following: Callable[[], Any] | None, obj: Any) -> tuple[Any, bool]:
    """What ``copy.copy(obj)`` gives without the ``__copy__`` the fix adds: the next
    ``__copy__`` in its MRO (``following``) where there is one, else copy's own
    fallback (:func:`_copy_reduction`, then copy's rebuild); and whether
    ``__reduce_ex__`` made
    it: a ``__copy__`` the fix adds changes only such a copy."""
    if following is not None:
        return following(), False
    reduced, by_reduce_ex = _copy_reduction(obj)
    if isinstance(reduced, str):
        return obj, by_reduce_ex
    return copy._reconstruct(obj, None, *reduced), by_reduce_ex  # type: ignore[attr-defined]


def _copy_reduction(obj: Any) -> tuple[Any, bool]:
    """The reduction ``copy.copy`` asks for, looked up as it looks it up: the
    ``copyreg`` reducer of the class, else ``__reduce_ex__(4)`` unless it is None,
    else ``__reduce__()`` unless it is false, else ``copy.Error``."""
    cls = type(obj)
    reductor = copyreg.dispatch_table.get(cls)
    if reductor is not None:
        return reductor(obj), False
    reductor = getattr(obj, "__reduce_ex__", None)
    if reductor is not None:
        return reductor(4), True
    reductor = getattr(obj, "__reduce__", None)
    if reductor:
        return reductor(), False
    raise copy.Error(f"un(shallow)copyable object of type {cls}")


def check_copy_rebuild() -> None:
    """That ``copy._reconstruct`` (private: no public function rebuilds an object
    from its reduction as ``copy.copy`` does) still rebuilds each part of a
    reduction as a shallow copy has it; else the state repairs whose effect on
    ``copy.copy`` the ``__copy__`` repairs undo stay stock, and those with them."""

    class Sample(list):  # type: ignore[type-arg]  # a __dict__, slots and list items
        __slots__ = ("__dict__", "slot")

    class Stateful(collections.OrderedDict):  # type: ignore[type-arg]  # dict items, __setstate__
        def __setstate__(self, state: Any) -> None:
            self.state = state

    sample, stateful = Sample([1]), Stateful(a=1)
    sample.slot, sample.attribute, stateful.attribute = 2, 3, 4  # type: ignore[attr-defined]
    for obj, attributes in ((sample, vars(sample)), (stateful, {"state": vars(stateful)})):
        clone = stock_copy(None, obj)[0]
        found = (type(clone), clone, vars(clone), getattr(clone, "slot", None), clone is obj)
        if found != (type(obj), obj, attributes, getattr(obj, "slot", None), False):
            raise RuntimeError(f"copy._reconstruct no longer rebuilds a {type(obj).__name__}")
