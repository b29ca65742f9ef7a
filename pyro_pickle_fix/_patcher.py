"""Applying and removing the patches of :data:`pyro_pickle_fix._targets.PATCHES`,
and reporting on them.

Loaded when pyro is imported (see :mod:`pyro_pickle_fix._trigger`) or when the
API is used; wrapt and the wrappers are loaded when the first target is wrapped.
"""

from __future__ import annotations

import _thread
import os
import sys
import threading

from . import _trigger as trigger
from ._targets import BY_TARGET, KNOWN_PYRO, PATCHES, Patch, parse_version

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType
    from typing import Any

_lock = _thread.RLock()
_armed = False
# unpatch() is under way (it waits for saves outside the lock); patch() waits for it.
_unpatching = False
_unpatched = threading.Condition(_lock)
# target -> what was done to it (a _Wrapped, or an integrations.dask.DaskRegistration),
# in the order it was done: unpatch() undoes it in the reverse order, so a repair is
# always removed before what it requires.
_applied: dict[str, Any] = {}
# target -> why it was left alone
_skipped: dict[str, str] = {}
# targets left alone although their bug is there (a partner they require is missing)
_degraded: set[str] = set()
_warned_unknown_pyro = False


def patch() -> None:
    """Wrap every target whose module is imported; arm the rest for their import.

    Idempotent: there is never more than one wrapper layer on a target.  Waits
    for an :func:`unpatch` under way in another thread to finish.
    """
    global _armed
    with _lock:
        while _unpatching:
            _unpatched.wait()
        if _armed:
            return
        _armed = True
        saves = _saves()
        if saves is not None:
            saves.closing = False
        for target in _applied:  # what an earlier unpatch() left in place is ours again
            _skipped.pop(target, None)
    # Outside the lock: a callback may run now and import (wrapt, a target's module).
    for entry in PATCHES:
        trigger.when_imported(entry.trigger, _applier(entry))


def unpatch(*, wait: float = 10.0) -> None:
    """Put back exactly what each target was before :func:`patch` (a method the
    class did not have is removed again) and disarm the pending imports.

    A save that another thread has under way keeps the fix to its end: a save
    that starts once ``unpatch()`` has begun runs stock, and the wrappers are
    taken out once every save under way is written (up to ``wait`` seconds; after
    that they stay, with a warning, until the next ``unpatch()``).  Repairs are
    removed before what they require.  A wrapper that another library has
    wrapped again on top of ours cannot be taken out without removing theirs: it
    stays, with a warning, and :func:`status` shows it as still wrapped.
    """
    global _armed, _unpatching
    with _lock:
        while _unpatching:
            _unpatched.wait()
        _unpatching = True
        _armed = False
        trigger.forget_all()
        saves = _saves()
    drained = False
    try:
        # Outside the lock: a save under way may need it (an import, status()).
        drained = saves is None or saves.drain(wait)
    finally:
        with _lock:
            if drained:
                # Repairs before what they require: the reverse of the order they went in.
                _remove(list(reversed(_applied)))
            elif _applied:
                for target in _applied:
                    _skipped[target] = "unpatch() left it in place: a save was under way"
                trigger.warn(
                    "unpatch() left the fix in place: a save that began while it was on "
                    f"was still under way after {wait} s (or is this thread's own), and "
                    "the rest of it needs the fix. New saves run stock meanwhile; call "
                    "unpatch() again once that save is done."
                )
            for target in [t for t in _skipped if t not in _applied]:
                del _skipped[target]
            _degraded.clear()
            _unpatching = False
            _unpatched.notify_all()


def _after_fork_in_child() -> None:
    # The thread that was unpatching, and every other thread's save, stayed behind.
    global _unpatching
    _unpatching = False
    saves = _saves()
    if saves is not None:
        saves.reset()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _saves() -> Any:
    """The wrappers' record of saves in flight, if the wrappers are loaded at all."""
    wrappers = sys.modules.get(__package__ + "._wrappers")
    return None if wrappers is None else wrappers.SAVES


def _remove(targets: list[str]) -> None:
    """Take each target's wrapper out (with ``_lock`` held), in the order given."""
    for target in targets:
        outer = _applied[target].remove()
        if outer is None:
            del _applied[target]
        else:
            _skipped[target] = f"unpatch() could not remove it: {outer} wraps it"
            trigger.warn(
                f"could not unpatch {target.replace(':', '.')}: {outer} has wrapped "
                "it on top of pyro-pickle-fix, so taking ours out would take theirs "
                "too; the fix stays on for it. Unpatch that library first, or start "
                "the process with PYRO_PICKLE_FIX=0."
            )


def is_patched() -> bool:
    """True while the fix is on: patched (or waiting for pyro's import to patch),
    every target whose module is imported is wrapped, and none was left stock for
    want of a partner.  Changes nothing."""
    with _lock:
        return (
            (_armed or trigger.activation_requested())
            and not _degraded
            and all(_is_wrapped(entry) for entry in PATCHES if _imported(entry))
        )


def _imported(entry: Patch) -> bool:
    return entry.trigger in sys.modules and entry.target not in _skipped


def _applier(entry: Patch) -> trigger.Callback:
    def apply(module: ModuleType) -> None:
        _apply(entry)

    return apply


def _apply(entry: Patch) -> None:
    """Wrap one target.  Its imports and the wrapper's construction happen outside
    the lock (an import callback runs with that module's import lock held); the
    lock covers only the bookkeeping and the swap itself."""
    from ._loading import Unsupported

    with _lock:
        if not _armed or entry.target in _applied or entry.target in _skipped:
            return
    # (A requirement in a package that is not installed is moot: without torch, no
    # tensor carries pyro's weakref.)
    requires = [r for r in entry.requires if _installed(BY_TARGET[r].module.split(".")[0])]
    for required in requires:
        _apply(BY_TARGET[required])
    missing = [required for required in requires if required not in _applied]
    if missing:
        with _lock:
            needs = ", ".join(m.replace(":", ".") for m in missing)
            _skipped[entry.target] = (
                f"needs {needs}, which is not in place, so pyro's own method runs (stock behaviour)"
            )
            _degraded.add(entry.target)
        return
    try:
        owner, name, original = _resolve(entry)
        _warn_if_unknown_pyro()
        if entry.kind == "dask_pickle":
            from .integrations.dask import DaskRegistration

            with _lock:
                if not _armed or entry.target in _applied:
                    return
                _applied[entry.target] = DaskRegistration(original)
        else:
            wrapped = _Wrapped(entry, owner, name, original)
            with _lock:
                if not _armed or entry.target in _applied:
                    return
                wrapped.install()
                _applied[entry.target] = wrapped
            wrapped.check()
    except LookupError as missing_target:
        _skip(entry, str(missing_target), warn=True)
        return
    except Unsupported as reason:  # this torch cannot; stock behaviour is kept
        _skip(entry, str(reason), warn=False)
        return
    except _CheckFailed as failed:
        _skip(entry, str(failed), warn=True)
        return
    with _lock:
        _skipped.pop(entry.target, None)


def _skip(entry: Patch, reason: str, warn: bool) -> None:
    with _lock:
        applied = _applied.pop(entry.target, None)
        if applied is not None:
            applied.remove()
        _skipped[entry.target] = reason
    if warn:
        trigger.warn(f"skipped {entry.dotted}: {reason}; it is not patched.")


class _CheckFailed(Exception):
    """A replacement is in place but torch does not behave as it needs."""


def _ours(function: Any) -> bool:
    return bool(getattr(function, "_self_pyro_pickle_fix", None))


class _Wrapped:
    """A target wrapped in place with a wrapt ``FunctionWrapper`` (for an ``added``
    target, a method of the class's own that calls the inherited one), or, on a
    per-tensor hot path, replaced by a plain function that calls it."""

    def __init__(self, entry: Patch, owner: Any, name: str, original: Any) -> None:
        from ._wrappers import CHECKS, REPLACEMENTS, WRAPPERS

        self.checker = CHECKS.get(entry.kind)
        if _ours(original):
            # Another copy of this package (a reload) wrapped it already.
            wrapper, original = original, original.__wrapped__
            self.added = bool(getattr(wrapper, "_self_pyro_pickle_fix_added", False))
        else:
            if entry.kind == "mark_copy" and hasattr(owner, name):
                from ._loading import Unsupported

                # copy.copy calls that __copy__, not __reduce_ex__: nothing to mark.
                raise Unsupported(f"{owner.__qualname__} has a {name} of its own")
            # Only a method the class did not have is deleted again by unpatch().
            self.added = entry.added and name not in vars(owner)
            if entry.kind in REPLACEMENTS:
                wrapper = REPLACEMENTS[entry.kind](original, entry)
                wrapper.__wrapped__ = original  # type: ignore[attr-defined]
            else:
                import wrapt

                wrapper = wrapt.FunctionWrapper(original, WRAPPERS[entry.kind](original, entry))
            # wrapt keeps _self_* attributes on the wrapper, not on the wrapped function.
            wrapper._self_pyro_pickle_fix = entry.target
            wrapper._self_pyro_pickle_fix_added = self.added
        self.owner, self.name, self.original, self.wrapper = owner, name, original, wrapper

    def install(self) -> None:
        setattr(self.owner, self.name, self.wrapper)

    def check(self) -> None:
        """Raise :class:`_CheckFailed` if the replacement does not work here."""
        if self.checker is None:
            return
        try:
            self.checker()
        except Exception as error:
            raise _CheckFailed(
                f"torch does not use it as this fix needs ({error}); the repairs "
                "that require it are left stock"
            ) from None

    def active(self) -> bool:
        """Whether our wrapper runs: in place, or under a wrapper of someone else's."""
        current = vars(self.owner).get(self.name)
        for _ in range(100):  # a chain of __wrapped__, never a cycle in practice
            if current is self.wrapper:
                return True
            current = getattr(current, "__wrapped__", None)
            if current is None:
                return False
        return False

    def remove(self) -> str | None:
        """Take the wrapper out; None when done (or already gone), else what wraps it."""
        current = vars(self.owner).get(self.name)
        if current is self.wrapper:
            if self.added:
                delattr(self.owner, self.name)
            else:
                setattr(self.owner, self.name, self.original)
            return None
        if not self.active():
            return None
        return _describe(current)


def _describe(function: Any) -> str:
    module = getattr(function, "__module__", None) or type(function).__module__
    name = getattr(function, "__qualname__", None) or type(function).__qualname__
    return f"{type(function).__name__} {module}.{name}"


def _resolve(entry: Patch) -> tuple[Any, str, Any]:
    owner: Any = sys.modules.get(entry.module)
    if owner is None:
        import importlib

        try:
            owner = importlib.import_module(entry.module)
        except ImportError as error:
            raise LookupError(f"{entry.module} cannot be imported ({error})") from None
    *path, name = entry.path
    for part in path:
        try:
            owner = getattr(owner, part)
        except AttributeError:
            raise LookupError(f"{entry.module} has no {part!r} in {_release(entry)}") from None
    original = vars(owner).get(name)
    if entry.added and (original is None or _ours(original)):
        return owner, name, original or _inherited(owner, name)
    if original is None:
        raise LookupError(
            f"{'.'.join(path) or entry.module} does not define {name} in {_release(entry)}"
        )
    return owner, name, original


def _release(entry: Patch) -> str:
    """The installed release the target belongs to, for a message (read only then)."""
    distribution = "torch" if entry.module.split(".")[0] == "torch" else "pyro-ppl"
    return f"{distribution} {installed_version(distribution)}"


def _inherited(owner: type, name: str) -> Any:
    """A method for ``owner`` that calls the one it inherits (looked up at each call,
    so a base class patched or unpatched later is seen)."""

    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        return getattr(super(owner, self), name)(*args, **kwargs)

    method.__name__ = name
    method.__qualname__ = f"{owner.__qualname__}.{name}"
    method.__module__ = owner.__module__
    return method


def _is_wrapped(entry: Patch) -> bool:
    applied = _applied.get(entry.target)
    return applied is not None and bool(applied.active())


def _installed(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except ValueError:  # imported, without a spec
        return True


def installed_version(distribution: str) -> str | None:
    """An installed distribution's version, read without importing it; None if absent."""
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def pyro_version() -> str | None:
    """The installed pyro-ppl version, read without importing pyro; None if absent."""
    return installed_version("pyro-ppl")


def _warn_if_unknown_pyro() -> None:
    global _warned_unknown_pyro
    version = pyro_version()
    if _warned_unknown_pyro or version is None:
        return
    if KNOWN_PYRO[0] <= parse_version(version)[:3] <= KNOWN_PYRO[1]:
        return
    _warned_unknown_pyro = True
    low, high = (".".join(map(str, v)) for v in KNOWN_PYRO)
    trigger.warn(
        f"pyro-ppl {version} is outside the releases pyro-pickle-fix was checked "
        f"against ({low} to {high}); its patches are applied wherever their targets "
        "exist. Run `python -m pyro_pickle_fix check` to confirm that saving a guide "
        "is safe here, and report the result if it is not."
    )


class TargetStatus:
    """One row of :func:`status`."""

    __slots__ = ("bugs", "needed", "note", "target", "wrapped")

    def __init__(
        self,
        target: str,
        wrapped: bool,
        needed: bool | None,
        note: str,
        bugs: list[str] | None = None,
    ) -> None:
        self.target = target
        self.wrapped = wrapped
        self.needed = needed
        self.note = note
        #: The bugs this target fixes that this pyro-ppl on this Python has (a
        #: Python before 3.11 has none of those that need object.__getstate__).
        self.bugs = bugs or []

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


class Status:
    """What is patched in this interpreter, per target; ``str()`` is a readable table."""

    def __init__(
        self,
        pyro: str | None,
        python: str,
        active: bool,
        targets: list[TargetStatus],
        advisory: str | None = None,
    ) -> None:
        self.pyro = pyro
        self.python = python
        self.active = active
        self.targets = targets
        #: The published advisories against this torch's weights-only loading
        #: (None from torch 2.10 on, or when torch is not installed).
        self.advisory = advisory

    def as_dict(self) -> dict[str, Any]:
        return {
            "pyro": self.pyro,
            "python": self.python,
            "active": self.active,
            "targets": [row.as_dict() for row in self.targets],
            "advisory": self.advisory,
        }

    def __str__(self) -> str:
        answer = {True: "yes", False: "no", None: "unknown"}
        lines = [
            f"pyro-pickle-fix {'on' if self.active else 'off'} "
            f"(pyro-ppl {self.pyro or 'not installed'}, Python {self.python})",
            f"{'target':58} {'wrapped':8} {'needed':8} note",
        ]
        for row in self.targets:
            lines.append(
                f"{row.target:58} {answer[row.wrapped]:8} {answer[row.needed]:8} {row.note}"
            )
        if self.advisory:
            lines.append(f"advisory: {self.advisory}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"Status({self.as_dict()!r})"


def status() -> Status:
    """Per target: its dotted path, whether it is wrapped, and whether the installed
    pyro-ppl (on this Python and torch) has the bug it fixes (``None`` when that
    pyro-ppl is not one we know).  Changes nothing."""
    version = pyro_version()
    python = sys.version_info[:3]
    torch_text = installed_version("torch")
    torch = parse_version(torch_text) if torch_text else None
    rows = []
    with _lock:
        active = _armed or trigger.activation_requested()
        for entry in PATCHES:
            wrapped = _is_wrapped(entry)
            pyro = parse_version(version) if version is not None else None
            needed = None if pyro is None else entry.needed(pyro, python, torch)
            if entry.target in _skipped:
                note = "skipped: " + _skipped[entry.target]
            elif pyro is None:
                note = "pyro-ppl is not installed"
            elif entry.engine and not _installed(entry.module.split(".")[0]):
                needed = False  # nothing of that engine's can serialize a guide here
                note = f"{entry.module.split('.')[0]} is not installed"
            elif not wrapped and active and entry.trigger not in sys.modules:
                note = f"waits for `import {entry.trigger}`"
            elif entry.partner is not None:
                note = f"part of the repair of {BY_TARGET[entry.partner].dotted}"
            else:
                note = ""
            bugs = [
                bug.summary
                for bug in entry.bugs
                if pyro is not None and bug.present(pyro, python, torch) is not False
            ]
            rows.append(TargetStatus(entry.dotted, wrapped, needed, note, bugs))
    from ._loading import advisory

    return Status(
        version,
        ".".join(map(str, python)),
        active,
        rows,
        advisory(torch) if torch is not None else None,
    )
