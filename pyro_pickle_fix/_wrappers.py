"""The wrappers: pyro's serialization methods run against a private copy.

Each ``make_*`` function takes the original function and a :class:`Patch`, and
returns a wrapt wrapper ``(wrapped, instance, args, kwargs)``.  Nothing here
imports torch or pyro at module level: this module is loaded when the first
pyro target is patched, and pyro may still be half imported then.

What is written must be what stock pyro writes, byte for byte: the state a
wrapper returns holds the live objects themselves (so that an object shared by
two parts of a guide is written once and referred to, as stock writes it), and
only the top-level ``__dict__`` the original method changes is private.
"""

from __future__ import annotations

import _thread
import copy
import copyreg
import functools
import gc
import sys
import threading
import time
import weakref

from .errors import DeadReferenceError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from ._targets import Patch

    Wrapper = Callable[[Callable[..., Any], Any, tuple[Any, ...], dict[str, Any]], Any]

# ids of private copies this thread is serializing; a wrapped method of a base
# class reached through super() works on the same copy instead of copying again.
_in_flight = threading.local()


class _Copying(threading.local):
    #: id of the object that copy.copy is copying in this thread (a mark_copy
    #: entry sets it around the object's __reduce_ex__), else None.
    target: int | None = None


_copying = _Copying()


class _Inert:
    """What a private copy whose class has a ``__del__`` becomes when it is
    dropped: that finalizer never runs for a copy the user did not make (it would
    act on resources the live object still holds)."""


def _holders(attributes: dict[str, Any], name: str) -> int:
    return sys.getrefcount(attributes[name])


# What _holders counts for a value that one __dict__ and its private copy hold, and
# nothing else: calibrated on this interpreter, not assumed.
_owner: dict[str, Any] = {"x": {}}
_SOLE = _holders(_owner.copy(), "x")
del _owner


def private_copy(obj: Any, snapshot: tuple[str, ...] = ()) -> Any:
    """A shallow copy of ``obj`` with its own ``__dict__``; each container named in
    ``snapshot`` gets a copy of its own where nothing but ``obj`` holds it (one
    that anything else holds stays shared, so that the stream shares it as
    stock's does), and everything else is shared.

    Never runs ``__init__``, ``__setattr__`` or any user code, and each copy is a
    single C call, so none sees a container half-changed by a training thread.
    Drop the copy with :func:`discard`.
    """
    attributes = obj.__dict__.copy()
    for name in snapshot:
        if type(attributes.get(name)) is not dict:
            continue
        held = _holders(attributes, name)
        if held > _SOLE and SAVES.states:
            SAVES.prune()  # the other holder may be a finished save's state we kept
            held = _holders(attributes, name)
        if held <= _SOLE:
            attributes[name] = attributes[name].copy()
    clone = object.__new__(type(obj))
    object.__setattr__(clone, "__dict__", attributes)
    return clone


def _discardable_count() -> int:
    # What discard() counts for a copy that only its maker's local variable holds
    # (the same frames: the maker's, one call, getrefcount's argument).
    clone = object.__new__(_Inert)
    return _count_held(clone)


def _count_held(clone: Any) -> int:
    return sys.getrefcount(clone)


_DISCARDABLE = _discardable_count()


def discard(clone: Any, failed: bool = False) -> None:
    """Drop a private copy.  If its class defines ``__del__``, the copy becomes an
    :class:`_Inert` first, unless the original method kept a reference to it
    (after a failure, the traceback's frames hold it: it becomes inert anyway)."""
    if getattr(type(clone), "__del__", None) is None:
        return
    if not failed and sys.getrefcount(clone) > _DISCARDABLE:
        return  # stored somewhere by the original: it stays what it is
    try:
        clone.__class__ = _Inert
    except TypeError:  # a layout _Inert cannot take (a C base, __slots__)
        inert = _inert_subclass(type(clone))
        if inert is not None:
            clone.__class__ = inert


def _inert_subclass(cls: type) -> type | None:
    """A subclass of ``cls`` whose ``__del__`` does nothing, made once per class;
    None where the class will not have one (its ``__init_subclass__`` refuses):
    then its copies stay what they are, and a save never fails for it."""
    if cls not in _INERT:
        namespace = {"__del__": lambda self: None, "__slots__": ()}
        try:
            _INERT[cls] = type(cls)(f"_Inert{cls.__name__}", (cls,), namespace)
        except Exception:
            _INERT[cls] = None
    return _INERT[cls]


_INERT: dict[type, type | None] = {}


def _counts(states: list[tuple[int, Any]]) -> list[int]:
    return [sys.getrefcount(entry[1]) for entry in states]


# What _counts gives for a state that nothing but its entry in the list holds.
_LISTED = _counts([(0, {})])[0]


class _Saves:
    """The saves under way, by the states their wrappers returned.

    Such a state can hold pyro's live registries (a ``hide`` entry's), whose
    tensors still carry pyro's weakref, which only the tensor-state hook leaves out
    when they are written; and the rest of such a save needs the other wrappers
    too.  So :func:`~pyro_pickle_fix.unpatch` takes nothing out until they are
    written.  Pickle gives no end-of-save signal, but a pickler keeps each state
    it wrote (its memo) until the save is over: a state is kept here until nothing
    else holds it, and dropped at the next garbage collection, or within the next
    save, after that.
    """

    def __init__(self) -> None:
        self.reset()
        self.collecting = False  # _prune_after_collection is in gc.callbacks
        #: unpatch() has begun: a save that is not under way in its thread runs stock
        self.closing = False

    def reset(self) -> None:
        """Empty (and after a fork: the child has none of the parent's other threads)."""
        self.lock = _thread.allocate_lock()
        self.running: dict[int, int] = {}  # thread id -> wrappers making a state
        self.states: list[tuple[int, Any]] = []  # (thread id, state)
        self.prune_at = 1

    def enter(self) -> bool:
        """A wrapper begins to make a state; False once unpatch() has begun, unless
        its thread is in the middle of a save that began before."""
        me = _thread.get_ident()
        dropped = None
        with self.lock:
            if self.closing and not any(t == me for t, _ in self._held()):
                return False
            self.running[me] = self.running.get(me, 0) + 1
            if len(self.states) >= self.prune_at:
                dropped = self._prune()
        del dropped  # (outside the lock: a finalizer may save)
        return True

    def leave(self, state: Any) -> None:
        """That state is made (None: it failed)."""
        me = _thread.get_ident()
        with self.lock:
            self.running[me] -= 1
            if not self.running[me]:
                del self.running[me]
            if state is None:
                return
            self.states.append((me, state))
            if not self.collecting:
                gc.callbacks.append(_prune_after_collection)
                self.collecting = True

    def _held(self) -> list[tuple[int, Any]]:  # with the lock held
        return [e for e, n in zip(self.states, _counts(self.states), strict=True) if n > _LISTED]

    def _prune(self) -> list[tuple[int, Any]]:
        """(With the lock held.)  Keep the states something else holds; return the
        others, for the caller to drop once it has let the lock go."""
        dropped = self.states
        self.states = self._held()
        self.prune_at = max(1, 2 * len(self.states))
        return dropped

    def prune(self) -> None:
        with self.lock:
            dropped = self._prune()
        del dropped

    def drain(self, seconds: float) -> bool:
        """Close, and wait until no save is under way; False if one still was after
        ``seconds``, or at once if only this thread's own are (waiting cannot end
        them)."""
        me = _thread.get_ident()
        deadline = time.monotonic() + seconds
        pause = 0.001
        with self.lock:
            self.closing = True
        while True:
            with self.lock:
                dropped = self._prune()
                threads = {t for t, _ in self.states} | set(self.running)
                if not threads and self.collecting:
                    if _prune_after_collection in gc.callbacks:
                        gc.callbacks.remove(_prune_after_collection)
                    self.collecting = False
            del dropped
            if not threads:
                return True
            if threads == {me} or time.monotonic() >= deadline:
                return False
            time.sleep(pause)
            pause = min(2 * pause, 0.05)


SAVES = _Saves()


def _prune_after_collection(phase: str, info: dict[str, Any]) -> None:
    # A collection can start in any thread, even one holding the lock: never wait.
    if phase == "stop" and SAVES.states and SAVES.lock.acquire(blocking=False):
        try:
            dropped = SAVES._prune()
        finally:
            SAVES.lock.release()
        del dropped


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
    touched, and the state holds the live objects stock pyro would write."""
    hide = patch.hide
    alive = patch.alive
    leaf_tensors = patch.leaf_tensors
    snapshot = patch.snapshot
    saves = SAVES

    def copy_on_serialize(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        # (Inlined helpers: this runs for every module of a guide on every save.)
        if alive:
            _check_alive(instance, alive)
        try:
            in_flight = _in_flight.ids
        except AttributeError:
            in_flight = _in_flight.ids = set()
        nested = id(instance) in in_flight
        copying = False
        if not nested:
            # copy.copy shares the containers with the original, as stock's does.
            copying = _copying.target == id(instance)
        # A save's state may hold the live registries (taken here, or by a base
        # class's method through super()): it needs the tensor-state hook until it
        # is written.  (copy.copy writes no tensor.)
        exposes = not nested and not copying
        if exposes and not saves.enter():
            return wrapped(*args, **kwargs)  # unpatch() has begun: stock
        state = None
        try:
            target = instance if nested else private_copy(instance, () if copying else snapshot)
            hidden = None
            if hide:
                attributes = target.__dict__
                hidden = {}
                placeholders = {}
                for name in hide:
                    if name in attributes:
                        # The original's loop over these registries reaches live tensors
                        # and submodules; on the private copy it finds nothing.
                        hidden[name] = value = attributes[name]
                        attributes[name] = placeholders[name] = type(value)()
            in_flight.add(id(target))
            try:
                state = original(target, *args, **kwargs)
            except BaseException:
                if not nested:
                    discard(target, failed=True)
                raise
            finally:
                if not nested:
                    in_flight.discard(id(target))
                if hidden:
                    attributes.update(hidden)
            if not nested:
                discard(target)
            # (A state that is the private __dict__ itself, as object.__getstate__
            # gives where the class has none of its own, has its registries back.)
            if hidden and isinstance(state, dict) and state is not attributes:
                for name, key in hide.items():
                    if name in hidden and key in state:
                        # The registry itself where the original put it (torch's Module
                        # state shares it), a copy where the original copied it
                        # (get_state).
                        live = hidden[name]
                        state[key] = live if state[key] is placeholders[name] else live.copy()
        finally:
            if exposes:
                saves.leave(state)
        if leaf_tensors and isinstance(state, dict):
            _make_leaves(state)
        return state

    return copy_on_serialize


# id(non-leaf tensor) -> (weakref to it, weakref to its leaf): while a save holds
# the leaf, every state that holds the tensor gets that same leaf, so the stream
# shares it where stock's shares the tensor.
_leaves: dict[int, tuple[weakref.ref[Any], weakref.ref[Any]]] = {}


def _leaf_of(value: Any) -> Any:
    key = id(value)
    known = _leaves.get(key)
    if known is not None and known[0]() is value:
        made = known[1]()
        if made is not None:
            return made

    def forget(ref: weakref.ref[Any]) -> None:
        if _leaves.get(key, (None, None))[1] is ref:
            del _leaves[key]

    made = value.detach().requires_grad_(value.requires_grad)
    _leaves[key] = (weakref.ref(value), weakref.ref(made, forget))
    return made


def _make_leaves(state: dict[str, Any]) -> None:
    import torch

    def leaf(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and not value.is_leaf:
            return _leaf_of(value)
        return value

    for name, value in state.items():
        if isinstance(value, torch.Tensor):
            state[name] = leaf(value)
        elif type(value) is tuple and any(isinstance(v, torch.Tensor) for v in value):
            state[name] = tuple(leaf(v) for v in value)


def _state_argument(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any]:
    """``__setstate__(state)`` called positionally or as ``state=...``: (state, a
    function that calls the original with a replacement state)."""
    if args:
        return args[0], lambda original, instance, state: original(
            instance, state, *args[1:], **kwargs
        )
    return kwargs.get("state"), lambda original, instance, state: original(
        instance, **dict(kwargs, state=state)
    )


def make_adopt_children(original: Callable[..., Any], patch: Patch) -> Wrapper:
    """Before an AutoGuide takes its state, child guides that still belong to a
    live master (copy.copy shares them) are replaced by copies of their own."""

    def adopt_children(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        state, call = _state_argument(args, kwargs)
        modules = state.get("_modules") if isinstance(state, dict) else None
        if modules:
            owned = _owned_children(modules)
            if owned is not modules:
                state = dict(state, _modules=owned)
        return call(original, instance, state)

    return adopt_children


def _owned_children(modules: dict[str, Any]) -> dict[str, Any]:
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
    """Before an EasyGuide takes its state, Groups bound to another live guide
    (copy.copy shares them) are replaced by copies bound to this one, as the
    Groups of a loaded guide are."""

    def adopt_groups(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        state, call = _state_argument(args, kwargs)
        groups = state.get("groups") if isinstance(state, dict) else None
        if groups and type(groups) is dict:
            owned = _owned_groups(instance, groups)
            if owned is not groups:
                state = dict(state, groups=owned)
        return call(original, instance, state)

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


def make_drop_weakref(original: Callable[..., Any], patch: Patch) -> Callable[..., Any]:
    """``torch._utils._get_obj_state(tensor)`` without pyro's weakref: torch then
    writes the tensor exactly as after stock pyro's pop of it from the live tensor.

    Any other state is returned as it is; ``copy.copy`` of a tensor keeps the
    weakref, as stock's copy does.  The weakref is left out whatever the pickler.
    Under one that can write it (dill), stock writes it for a tensor it has not
    popped, and whether it has depends on the saves before and the pyro.param()
    calls since: pyro puts back the very weakref object it had, so nothing here can
    tell.  Both files load the same tensors.  torch calls this for every tensor it
    pickles, so it is a plain function in place of the original, not a wrapt wrapper: wrapt's
    call costs ~6,000 instructions, 3% of writing a small tensor with torch.save.
    """

    key = _WEAKREF
    ref = weakref.ref
    copying = _copying

    def _get_obj_state(obj: Any, *args: Any, **kwargs: Any) -> Any:
        state = original(obj, *args, **kwargs)
        if (
            type(state) is dict
            and isinstance(state.get(key), ref)
            and copying.target != id(obj)  # copy.copy of this tensor keeps it
        ):
            # (The tensor's own __dict__, which a stock save in another thread may
            # change meanwhile: read once.)
            state = state.copy()
            state.pop(key, None)
        return state

    functools.update_wrapper(_get_obj_state, original)
    return _get_obj_state


def check_drop_weakref() -> None:
    """That torch pickles a tensor and a Parameter carrying pyro's weakref through
    the hook, leaving the live ones as they were: else ``RuntimeError``."""
    import pickle

    import torch

    for value in (torch.zeros(1), torch.nn.Parameter(torch.zeros(1))):
        value.__dict__[_WEAKREF] = link = weakref.ref(value)
        try:
            loaded = pickle.loads(pickle.dumps(value))
        except Exception as error:
            raise RuntimeError(
                f"torch cannot pickle a {type(value).__name__} through it ({error!r})"
            ) from None
        if value.__dict__.get(_WEAKREF) is not link or _WEAKREF in loaded.__dict__:
            raise RuntimeError(f"torch does not read a {type(value).__name__}'s state through it")


def make_mark_copy(original: Callable[..., Any], patch: Patch) -> Callable[..., Any]:
    """A ``__copy__`` that does what ``copy.copy`` does without one (the class's
    ``copyreg`` reducer or ``__reduce_ex__(4)``, then ``copy._reconstruct``), with
    the object marked as being copied while it is reduced, so the wrappers give
    stock's shallow copy instead of a save's state."""

    def __copy__(self: Any) -> Any:
        cls = type(self)
        reductor = copyreg.dispatch_table.get(cls)
        previous = _copying.target
        _copying.target = id(self)
        try:
            reduced = reductor(self) if reductor is not None else self.__reduce_ex__(4)
        finally:
            _copying.target = previous
        if isinstance(reduced, str):
            return self
        return copy._reconstruct(self, None, *reduced)  # type: ignore[attr-defined]

    __copy__.__qualname__ = f"{patch.path[0]}.__copy__"
    return __copy__


def make_safe_load(original: Callable[..., Any], patch: Patch) -> Wrapper:
    from .fixes.loading import REPAIRS

    (repair,) = [r for r in REPAIRS if r.target == patch.target]
    if repair.check is not None:
        repair.check()
    return repair.fix


#: kind -> factory of the function that replaces the original outright (hot paths).
REPLACEMENTS: dict[str, Callable[[Callable[..., Any], Patch], Callable[..., Any]]] = {
    "drop_weakref": make_drop_weakref,
    "mark_copy": make_mark_copy,
}

#: kind -> a check that the replacement works in this torch, run once it is in place.
CHECKS: dict[str, Callable[[], None]] = {"drop_weakref": check_drop_weakref}

#: kind -> factory of the wrapt wrapper around the original.
WRAPPERS: dict[str, Callable[[Callable[..., Any], Patch], Wrapper]] = {
    "copy_on_serialize": make_copy_on_serialize,
    "adopt_children": make_adopt_children,
    "adopt_groups": make_adopt_groups,
    "safe_load": make_safe_load,
}
