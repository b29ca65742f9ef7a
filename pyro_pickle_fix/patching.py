"""Applying and removing the patches of :data:`pyro_pickle_fix.patches.PATCHES`,
and reporting on them.

Loaded when pyro is imported (see :mod:`pyro_pickle_fix.trigger`) or when the
API is used; wrapt and the wrappers are loaded when the first target is wrapped.
"""

from __future__ import annotations

import _thread
import sys

from . import trigger
from .patches import KNOWN_PYRO, PATCHES, Patch, parse_version

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType
    from typing import Any

_lock = _thread.RLock()
_armed = False
# target -> what was done to it (a _Wrapped, or an engines.DaskRegistration)
_applied: dict[str, Any] = {}
# target -> why it was left alone
_skipped: dict[str, str] = {}
_warned_unknown_pyro = False


def patch() -> None:
    """Wrap every target whose module is imported; arm the rest for their import.

    Idempotent: there is never more than one wrapper layer on a target.
    """
    global _armed
    with _lock:
        if _armed:
            return
        _armed = True
        for entry in PATCHES:
            trigger.when_imported(entry.trigger, _applier(entry))


def unpatch() -> None:
    """Put pyro's original functions back and disarm the pending imports."""
    global _armed
    with _lock:
        _armed = False
        trigger.forget_all()
        for applied in _applied.values():
            applied.remove()
        _applied.clear()
        _skipped.clear()


def _settle() -> None:
    # Activation defers patch() until pyro is imported; asking about the fix
    # before then arms it, as it would have been.
    if not _armed and trigger.activation_requested():
        patch()


def is_patched() -> bool:
    """True while the fix is on: armed, and every imported target is wrapped."""
    _settle()
    with _lock:
        return _armed and all(
            _is_wrapped(entry) for entry in PATCHES if entry.trigger in sys.modules
        )


def _applier(entry: Patch) -> trigger.Callback:
    def apply(module: ModuleType) -> None:
        _apply(entry)

    return apply


def _apply(entry: Patch) -> None:
    with _lock:
        if not _armed or entry.target in _applied:
            return
        try:
            owner, name, original = _resolve(entry)
        except LookupError as missing:
            _skipped[entry.target] = str(missing)
            trigger.warn(f"skipped {entry.dotted}: {missing}; it is not patched.")
            return
        _warn_if_unknown_pyro()
        if entry.kind == "dask_pickle":
            from .engines import DaskRegistration

            _applied[entry.target] = DaskRegistration(original)
        else:
            _applied[entry.target] = _Wrapped(entry, owner, name, original)
        _skipped.pop(entry.target, None)


class _Wrapped:
    """A target wrapped in place with a wrapt ``FunctionWrapper``."""

    def __init__(self, entry: Patch, owner: Any, name: str, original: Any) -> None:
        import wrapt

        from .serialize import WRAPPERS

        if getattr(original, "_self_pyro_pickle_fix", None):
            # Another copy of this package (a reload) wrapped it already.
            wrapper, original = original, original.__wrapped__
        else:
            wrapper = wrapt.FunctionWrapper(original, WRAPPERS[entry.kind](original, entry))
            # wrapt keeps _self_* attributes on the wrapper, not on the wrapped function.
            wrapper._self_pyro_pickle_fix = entry.target  # type: ignore[attr-defined]
            setattr(owner, name, wrapper)
        self.owner, self.name, self.original, self.wrapper = owner, name, original, wrapper

    def active(self) -> bool:
        return vars(self.owner).get(self.name) is self.wrapper

    def remove(self) -> None:
        if self.active():
            setattr(self.owner, self.name, self.original)


def _resolve(entry: Patch) -> tuple[Any, str, Any]:
    owner: Any = sys.modules.get(entry.module)
    if owner is None:
        import importlib

        owner = importlib.import_module(entry.module)
    *path, name = entry.path
    for part in path:
        try:
            owner = getattr(owner, part)
        except AttributeError:
            raise LookupError(
                f"{entry.module} has no {part!r} in pyro-ppl {pyro_version()}"
            ) from None
    original = vars(owner).get(name)
    if original is None:
        raise LookupError(
            f"{'.'.join(path) or entry.module} does not define {name} in pyro-ppl {pyro_version()}"
        )
    return owner, name, original


def _is_wrapped(entry: Patch) -> bool:
    applied = _applied.get(entry.target)
    return applied is not None and bool(applied.active())


def _installed(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except ValueError:  # imported, without a spec
        return True


def pyro_version() -> str | None:
    """The installed pyro-ppl version, read without importing pyro; None if absent."""
    from importlib import metadata

    try:
        return metadata.version("pyro-ppl")
    except metadata.PackageNotFoundError:
        return None


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
        self, pyro: str | None, python: str, active: bool, targets: list[TargetStatus]
    ) -> None:
        self.pyro = pyro
        self.python = python
        self.active = active
        self.targets = targets

    def as_dict(self) -> dict[str, Any]:
        return {
            "pyro": self.pyro,
            "python": self.python,
            "active": self.active,
            "targets": [row.as_dict() for row in self.targets],
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
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"Status({self.as_dict()!r})"


def status() -> Status:
    """Per target: its dotted path, whether it is wrapped, and whether the installed
    pyro-ppl has the bug it fixes (``None`` when that pyro-ppl is not one we know)."""
    _settle()
    version = pyro_version()
    python = sys.version_info[:3]
    rows = []
    with _lock:
        for entry in PATCHES:
            wrapped = _is_wrapped(entry)
            needed = None if version is None else entry.needed(parse_version(version), python)
            if entry.target in _skipped:
                note = "skipped: " + _skipped[entry.target]
            elif version is None:
                note = "pyro-ppl is not installed"
            elif entry.engine and not _installed(entry.module.split(".")[0]):
                needed = False  # nothing of that engine's can serialize a guide here
                note = f"{entry.module.split('.')[0]} is not installed"
            elif not wrapped and _armed and entry.trigger not in sys.modules:
                note = f"waits for `import {entry.trigger}`"
            else:
                note = ""
            bugs = [
                bug.summary
                for bug in entry.bugs
                if version is not None and bug.present(parse_version(version), python) is not False
            ]
            rows.append(TargetStatus(entry.dotted, wrapped, needed, note, bugs))
        active = _armed
    return Status(version, ".".join(map(str, python)), active, rows)
