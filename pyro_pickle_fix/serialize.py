"""The wrappers: pyro's serialization methods run against a private copy.

Each ``make_*`` function takes the original function and a :class:`Patch`, and
returns a wrapt wrapper ``(wrapped, instance, args, kwargs)``.  Nothing here
imports torch or pyro at module level: this module is loaded when the first
pyro target is patched, and pyro may still be half imported then.
"""

from __future__ import annotations

import pickle
import threading
import weakref
from collections import OrderedDict

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from .patches import Patch

    Wrapper = Callable[[Callable[..., Any], Any, tuple[Any, ...], dict[str, Any]], Any]


class DeadReferenceError(pickle.PicklingError):
    """An object refers through a dead weak reference to what it needs; pickling it
    would write bytes that cannot be loaded."""


# Containers in an instance __dict__ that get their own copy in the private copy:
# nn.Module's registries and pyro's bookkeeping dicts, which the original methods
# and concurrent training threads change in place.
_OWNED_CONTAINERS = frozenset({dict, OrderedDict, set, list})

# ids of private copies this thread is serializing; a wrapped method of a base
# class reached through super() works on the same copy instead of copying again.
_in_flight = threading.local()


def _copies_in_flight() -> set[int]:
    ids: set[int] | None = getattr(_in_flight, "ids", None)
    if ids is None:
        ids = _in_flight.ids = set()
    return ids


def private_copy(obj: Any) -> Any:
    """A shallow copy of ``obj`` with its own ``__dict__`` and its own containers.

    Never runs ``__init__``, ``__setattr__`` or any user code, and each copy is a
    single C call, so none sees a container half-changed by a training thread.
    """
    attributes = obj.__dict__.copy()
    for name, value in attributes.items():
        if type(value) in _OWNED_CONTAINERS:
            attributes[name] = value.copy()
    clone = object.__new__(type(obj))
    object.__setattr__(clone, "__dict__", attributes)
    return clone


def _check_alive(obj: Any, names: tuple[str, ...]) -> None:
    for name in names:
        ref = obj.__dict__.get(name)
        if isinstance(ref, weakref.ref) and ref() is None:
            raise DeadReferenceError(
                f"cannot pickle {type(obj).__module__}.{type(obj).__qualname__} object "
                f"at {id(obj):#x}: its attribute {name!r} is a weak reference to an "
                "object that has been garbage collected, so the pickle could not be "
                "loaded. Keep a reference to that object (for a Group: its EasyGuide) "
                "and save it together with this one."
            )


def make_copy_on_serialize(original: Callable[..., Any], patch: Patch) -> Wrapper:
    """The original method runs against a private copy; the live object is never
    touched and the state returned never shares the live containers."""
    hide = patch.hide
    alive = patch.alive
    leaf_tensors = patch.leaf_tensors
    weakref_free = patch.weakref_free

    def copy_on_serialize(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        if alive:
            _check_alive(instance, alive)
        in_flight = _copies_in_flight()
        nested = id(instance) in in_flight
        target = instance if nested else private_copy(instance)
        attributes = target.__dict__
        hidden = {name: attributes[name] for name in hide if name in attributes}
        for name, value in hidden.items():
            # The original's loop over these registries reaches live tensors and
            # submodules; on the private copy it finds nothing.
            attributes[name] = type(value)()
        in_flight.add(id(target))
        try:
            state = original(target, *args, **kwargs)
        finally:
            if not nested:
                in_flight.discard(id(target))
            attributes.update(hidden)
        if not isinstance(state, dict):
            return state
        for name, value in hidden.items():
            if hide[name] in state:
                state[hide[name]] = value  # the private copy's, never the live one
        if leaf_tensors:
            _make_leaves(state)
        for key in weakref_free:
            if isinstance(state.get(key), dict):
                state[key] = WeakrefFreeDict(state[key])
        return state

    return copy_on_serialize


def _make_leaves(state: dict[str, Any]) -> None:
    import torch

    def leaf(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and not value.is_leaf:
            return value.detach().requires_grad_(value.requires_grad)
        return value

    for name, value in state.items():
        if isinstance(value, torch.Tensor):
            state[name] = leaf(value)
        elif type(value) is tuple and any(isinstance(v, torch.Tensor) for v in value):
            state[name] = tuple(leaf(v) for v in value)


def make_adopt_children(original: Callable[..., Any], patch: Patch) -> Wrapper:
    """Before an AutoGuide takes its state, child guides that still belong to a
    live master (copy.copy shares them) are replaced by copies of their own."""

    def adopt_children(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        (state,) = args
        modules = state.get("_modules") if isinstance(state, dict) else None
        if modules:
            owned = _owned_children(modules)
            if owned is not modules:
                state = dict(state, _modules=owned)
        return original(instance, state, **kwargs)

    return adopt_children


def _owned_children(modules: dict[str, Any]) -> dict[str, Any]:
    import copy

    from pyro.infer.autoguide.guides import AutoGuide

    owned = None
    for name, child in modules.items():
        master = getattr(child, "__dict__", {}).get("master")
        if isinstance(child, AutoGuide) and master is not None and master() is not None:
            if owned is None:
                owned = type(modules)(modules)
            owned[name] = copy.copy(child)
    return modules if owned is None else owned


def make_adopt_groups(original: Callable[..., Any], patch: Patch) -> Wrapper:
    """Before a module takes its state, EasyGuide Groups bound to another live
    guide (copy.copy shares them) are replaced by copies bound to this one, as
    the Groups of a loaded guide are."""

    def adopt_groups(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        (state,) = args
        groups = state.get("groups") if isinstance(state, dict) else None
        if groups and type(groups) is dict:
            owned = _owned_groups(instance, groups)
            if owned is not groups:
                state = dict(state, groups=owned)
        return original(instance, state, **kwargs)

    return adopt_groups


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


_WEAKREF = "unconstrained"  # pyro's link from a constrained to an unconstrained tensor


def _has_weakref(attributes: Any) -> bool:
    return type(attributes) is dict and isinstance(attributes.get(_WEAKREF), weakref.ref)


def _without_weakref(attributes: dict[str, Any]) -> dict[str, Any]:
    attributes = attributes.copy()
    del attributes[_WEAKREF]
    return attributes


def make_parameter_reduce(original: Callable[..., Any], patch: Patch) -> Wrapper:
    """torch writes a Parameter's ``__dict__``; leave out the weakref pyro keeps there,
    exactly as if pyro had popped it from the live Parameter.

    For a Parameter without that weakref the wrapper hands back the very tuple the
    original returned, so what torch writes is untouched.
    """
    from torch._utils import _rebuild_parameter, _rebuild_parameter_with_state

    def parameter_reduce(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        reduced = original(instance, *args, **kwargs)
        rebuild, arguments = reduced
        if rebuild is _rebuild_parameter_with_state and _has_weakref(arguments[3]):
            state = _without_weakref(arguments[3])
            if not state:
                return _rebuild_parameter, arguments[:3]
            return rebuild, (*arguments[:3], state)
        return reduced

    return parameter_reduce


class WeakrefFreeDict(dict):  # type: ignore[type-arg]
    """A dict of tensors that pickles (and deep-copies) as a plain dict in which
    tensors carrying pyro's weakref are replaced by twins without it; a shallow
    copy, and everything else, sees the live tensors themselves."""

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        items = [(key, _weakref_free_twin(value)) for key, value in self.items()]
        return dict, (), None, None, iter(items)

    def __copy__(self) -> dict[Any, Any]:
        return dict(self)


def _weakref_free_twin(tensor: Any) -> Any:
    import torch

    attributes = getattr(tensor, "__dict__", None)
    if type(tensor) is not torch.Tensor or not _has_weakref(attributes):
        return tensor  # Parameters: see make_parameter_reduce
    twin = tensor.detach().requires_grad_(tensor.requires_grad)  # same storage
    twin.__dict__.update(_without_weakref(attributes))  # type: ignore[arg-type]
    return twin


WRAPPERS: dict[str, Callable[[Callable[..., Any], Patch], Wrapper]] = {
    "copy_on_serialize": make_copy_on_serialize,
    "adopt_children": make_adopt_children,
    "adopt_groups": make_adopt_groups,
    "parameter_reduce": make_parameter_reduce,
}
