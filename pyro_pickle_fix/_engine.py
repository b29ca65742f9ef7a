"""Installs, checks and removes the repairs of :mod:`pyro_pickle_fix.fixes`, and
reports on them: :func:`patch`, :func:`unpatch`, :func:`is_patched`, :func:`status`.

Loaded when pyro is imported (activation, in :mod:`pyro_pickle_fix`, asks
:mod:`pyro_pickle_fix._trigger` for that; this module uses the same hook for each
repair's module) or when the API is used; wrapt is imported when the first repair
is wrapped.  The one lock covers bookkeeping and the swap of a class attribute,
never an import or a call into pyro or torch; it is made anew in a forked child.
"""

from __future__ import annotations

import _thread
import importlib
import os
import sys

from . import _trigger as trigger
from ._repairs import KNOWN_PYRO, Repair, known_pyro, parse_version
from .errors import warn

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType
    from typing import Any

_lock = _thread.RLock()
_armed = False
# target -> each class it is installed on (more than one after an importlib.reload
# of its module: the old class still has live instances), in the order installed.
_installed: dict[str, list[_Installed]] = {}
# target -> why it is left stock
_skipped: dict[str, str] = {}
# targets whose bug is here but that are left stock (a requirement is missing,
# the target is gone, this pyro-ppl was not verified): is_patched() says no.
_unfixed: set[str] = set()
_warned_unverified = False


def _after_fork_in_child() -> None:
    # A thread of the parent's may have held the lock; it does not exist here.
    global _lock
    _lock = _thread.RLock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def repairs() -> tuple[Repair, ...]:
    """Every repair, in the order they go in."""
    global _REPAIRS
    if _REPAIRS is None:
        from . import fixes
        from .integrations import dask

        found: list[Repair] = []
        for family in fixes.FAMILIES:
            found += importlib.import_module(f"{fixes.__name__}.{family}").REPAIRS
        _REPAIRS = (*found, *dask.REPAIRS)
    return _REPAIRS


_REPAIRS: tuple[Repair, ...] | None = None


def by_target() -> dict[str, Repair]:
    """Every repair by its target (``"module:Owner.attribute"``)."""
    return {repair.target: repair for repair in repairs()}


def patch() -> None:
    """Put every repair in place whose module is imported, and arm the rest for
    their import.  Idempotent; after an ``importlib.reload`` of a patched module,
    it patches the classes the module defines now.

    Not to be called while another thread saves or loads a Pyro object.
    """
    global _armed
    with _lock:
        was_armed, _armed = _armed, True
    for repair in repairs():
        if was_armed:
            if repair.trigger in sys.modules:
                _apply(repair)
        else:
            trigger.when_imported(repair.trigger, _applier(repair))


def unpatch() -> None:
    """Put back exactly what each target was before :func:`patch` (a method a class
    did not have is removed again), repairs before what they require, and disarm
    the pending imports.

    Not to be called while another thread saves or loads a Pyro object (as
    OpenTelemetry's and ddtrace's ``uninstrument``): such a save may run its first
    part patched and the rest stock.  A repair that another library has wrapped on
    top of ours stays, with a warning (taking ours out would take theirs too).
    """
    global _armed
    with _lock:
        _armed = False
        trigger.forget_all()
        for target in reversed(list(_installed)):
            kept = [done for done in _installed[target] if not done.remove()]
            if kept:
                _installed[target] = kept
            else:
                del _installed[target]
        _skipped.clear()
        _unfixed.clear()


def is_patched() -> bool:
    """True while the fix is on: armed (or waiting for pyro's import), and every
    repair whose bug may be in this pyro-ppl, Python and torch, and whose module is
    imported, is in place on the class that module defines now.  Changes nothing."""
    with _lock:
        if not (_armed or trigger.activation_requested()) or _unfixed:
            return False
        return all(
            _in_place(repair)
            for repair in repairs()
            if repair.trigger in sys.modules and repair.target not in _skipped
        )


def _applier(repair: Repair) -> trigger.Callback:
    def apply(module: ModuleType) -> None:
        _apply(repair)

    return apply


def _apply(repair: Repair) -> None:
    """Put one repair in place.  Imports, the repair's construction and its check
    run outside the lock (an import callback runs with that module's import lock
    held); the lock covers the bookkeeping and the swap itself."""
    global _warned_unverified
    with _lock:
        if not _armed or repair.target in _skipped or _in_place(repair):
            return
    reason, unfixed = _why_stock(repair)
    if reason:
        if unfixed and repair.reimplements:
            with _lock:
                first, _warned_unverified = not _warned_unverified, True
            if first:
                low, high = (".".join(map(str, v)) for v in KNOWN_PYRO)
                warn(
                    f"pyro-ppl {_version('pyro-ppl')} is outside the releases "
                    f"pyro-pickle-fix was verified against ({low} to {high}): the repairs "
                    "that compute what pyro's own methods return are left stock, so "
                    "saving a guide may change it. Run `python -m pyro_pickle_fix "
                    "status` to see which, and `python -m pyro_pickle_fix check` to see "
                    "what saving does here; upgrade pyro-pickle-fix when it supports "
                    "this release."
                )
        _leave_stock(repair, reason, unfixed=unfixed)
        return
    table = by_target()
    # (A requirement in a package that is not installed is moot: without torch, no
    # tensor carries pyro's weakref.)
    requires = [
        r for r in _declared(repair, "requires") or () if _package_installed(table[r].module)
    ]
    for required in requires:
        _apply(table[required])
    missing = [r for r in requires if not _in_place(table[r])]
    if missing:
        needs = ", ".join(table[m].dotted for m in missing)
        _leave_stock(repair, f"needs {needs}, which is not in place", unfixed=True)
        return
    try:
        owner, name, original = _resolve(repair)
        done = _Installed(repair, owner, name, original)
    except LookupError as gone:
        _leave_stock(repair, str(gone), unfixed=True)
        warn(f"skipped {repair.dotted}: {gone}; it is not patched.")
        return
    with _lock:
        if not _armed or _in_place(repair):
            return
        done.install()
        _installed.setdefault(repair.target, []).append(done)
    check = _declared(repair, "check")
    if check is None:
        return
    try:
        check()
    except Exception as error:
        _take_out(done)
        reason = f"it does not work with this torch/pyro ({error})"
        _leave_stock(repair, reason, unfixed=True)
        warn(f"skipped {repair.dotted}: {reason}; it is not patched.")


#: The mutation test's switch (tests/test_mutants.py): comma-separated targets to
#: leave stock, or ``target[requires]`` / ``target[check]`` to install a repair
#: without that part of its declaration.  Read once, at import; never set by users.
MUTANT = tuple(filter(None, os.environ.get("PYRO_PICKLE_FIX_TEST_MUTANT", "").split(",")))


def _declared(repair: Repair, part: str) -> Any:
    """A part of the repair's declaration, as the mutation test leaves it."""
    return None if f"{repair.target}[{part}]" in MUTANT else getattr(repair, part)


def _why_stock(repair: Repair) -> tuple[str, bool]:
    """Why the repair is not for this interpreter ('' if it is), and whether its
    bug may be here all the same."""
    if repair.target in MUTANT:
        return "left out by PYRO_PICKLE_FIX_TEST_MUTANT", False
    pyro_text = _version("pyro-ppl")
    if pyro_text is None:
        return "pyro-ppl is not installed", False
    pyro = parse_version(pyro_text)
    torch_text = _version("torch")
    torch = parse_version(torch_text) if torch_text else None
    needed = repair.needed(pyro, sys.version_info[:3], torch)
    if needed is False:
        return "this pyro-ppl, Python and torch do not have its bug", False
    if needed is None and repair.reimplements and not known_pyro(pyro):
        return f"not verified against pyro-ppl {pyro_text}: left stock", True
    return "", False


def _package_installed(module: str) -> bool:
    """Whether the package of that module is installed (imported or importable)."""
    import importlib.util

    top = module.split(".")[0]
    return top in sys.modules or importlib.util.find_spec(top) is not None


def _leave_stock(repair: Repair, reason: str, *, unfixed: bool) -> None:
    with _lock:
        _skipped[repair.target] = reason
        if unfixed:
            _unfixed.add(repair.target)


def _take_out(done: _Installed) -> None:
    with _lock:
        done.remove()
        entries = _installed.get(done.repair.target, [])
        if done in entries:
            entries.remove(done)
            if not entries:
                del _installed[done.repair.target]


def _in_place(repair: Repair) -> bool:
    """Whether the repair runs for the class its module defines now (a reload of
    the module makes a new class, which inherits nothing of ours)."""
    entries = _installed.get(repair.target)
    if not entries:
        return False
    if repair.how == "register":
        return all(done.active() for done in entries)
    owner = _current_owner(repair)
    return any(done.owner is owner and done.active() for done in entries)


def _current_owner(repair: Repair) -> Any:
    owner: Any = sys.modules.get(repair.module)
    for part in repair.path[:-1]:
        owner = getattr(owner, part, None)
    return owner


def _resolve(repair: Repair) -> tuple[Any, str, Any]:
    """(class, attribute, what it is now: the original, or None for an ``add``)."""
    owner: Any = sys.modules.get(repair.module)
    if owner is None:
        try:
            owner = importlib.import_module(repair.module)
        except ImportError as error:
            raise LookupError(f"{repair.module} cannot be imported ({error})") from None
    *path, name = repair.path
    for part in path:
        try:
            owner = getattr(owner, part)
        except AttributeError:
            raise LookupError(f"{repair.module} has no {part!r} in {_release(repair)}") from None
    original = vars(owner).get(name) if isinstance(owner, type) else getattr(owner, name, None)
    if _ours(original):  # put there by another copy of this package (a reload of it)
        original = getattr(original, "__wrapped__", None)
    if repair.how == "add":
        if original is not None:
            raise LookupError(
                f"{'.'.join(path)} defines {name} itself in {_release(repair)}, which "
                "this repair adds; pyro-pickle-fix must be updated for it"
            )
    elif original is None:
        raise LookupError(f"{'.'.join(path) or repair.module} has no {name} in {_release(repair)}")
    return owner, name, original


def _release(repair: Repair) -> str:
    return f"{repair.package} {_version(repair.package)}"


def _ours(function: Any) -> bool:
    return bool(getattr(function, "_self_pyro_pickle_fix", None)) or (
        getattr(function, "_pyro_pickle_fix", None) is True
    )


class _Installed:
    """One repair on one class: what it replaced (None: nothing, an ``add``) and
    what it put there."""

    def __init__(self, repair: Repair, owner: Any, name: str, original: Any) -> None:
        self.repair, self.owner, self.name, self.original = repair, owner, name, original
        if repair.how == "wrap":
            self.put: Any = _wrapper_class()(original, repair.fix(owner))
            self.put._self_pyro_pickle_fix = True  # wrapt keeps _self_* on the proxy
            self.put.__get__(None, owner)  # binds its one class-level object before any thread can
        elif repair.how == "register":
            self.put = repair.fix(original)  # registered now; see remove()
        else:
            function = (
                _added(owner, name, repair.fix(owner)) if original is None else repair.fix(original)
            )
            function.__name__ = name
            function.__qualname__ = f"{getattr(owner, '__qualname__', owner)}.{name}"
            function.__module__ = repair.module  # where the class's own functions are
            if original is not None:
                function.__wrapped__ = original
            function._pyro_pickle_fix = True
            self.put = function

    def install(self) -> None:
        if self.repair.how != "register":
            setattr(self.owner, self.name, self.put)

    def active(self) -> bool:
        """Whether ours runs: in place, or under a wrapper of someone else's."""
        if self.repair.how == "register":
            return bool(self.put.active())
        current = vars(self.owner).get(self.name)
        for _ in range(100):  # a chain of __wrapped__; never a cycle in practice
            if current is self.put:
                return True
            current = getattr(current, "__wrapped__", None)
            if current is None:
                return False
        return False

    def remove(self) -> bool:
        """Take it out; False where another library's wrapper is on top of it."""
        if self.repair.how == "register":
            self.put.remove()
            return True
        current = vars(self.owner).get(self.name)
        if current is not self.put:
            if not self.active():
                return True  # gone already
            warn(
                f"could not unpatch {self.repair.dotted}: {_describe(current)} has "
                "wrapped it on top of pyro-pickle-fix, so taking ours out would take "
                "theirs too; the fix stays on for it. Unpatch that library first, or "
                "start the process with PYRO_PICKLE_FIX=0."
            )
            return False
        if self.original is None:
            delattr(self.owner, self.name)
        else:
            setattr(self.owner, self.name, self.original)
        return True


def _added(owner: type, name: str, fix: Any) -> Any:
    """A method the class does not define, which hides nothing: ``fix(wrapped,
    instance, args, kwargs)``, as for a wrap, gets as ``wrapped`` the method the
    instance runs without it (the next in its MRO after ``owner``: a mixin's, a
    user base's) or None where there is none (copy's or pickle's own fallback)."""

    def method(*args: Any, **kwargs: Any) -> Any:
        if not args or not isinstance(args[0], owner):
            # Called through the class without an instance of it: what stock finds
            # there runs, with its own result or error.
            return _next_in_mro(owner, name)(*args, **kwargs)
        self, *rest = args
        return fix(getattr(super(owner, self), name, None), self, tuple(rest), kwargs)

    return method


def _next_in_mro(owner: type, name: str) -> Any:
    """``owner.name`` as stock has it, where the fix adds ``name`` to ``owner``: the
    next class in its MRO that defines it (``object.__getstate__``)."""
    for cls in owner.__mro__[1:]:
        if name in vars(cls):
            return vars(cls)[name]
    raise AttributeError(f"type object {owner.__name__!r} has no attribute {name!r}")


def _describe(function: Any) -> str:
    module = getattr(function, "__module__", None) or type(function).__module__
    name = getattr(function, "__qualname__", None) or type(function).__qualname__
    return f"{type(function).__name__} {module}.{name}"


_WRAPPER: Any = None


def _wrapper_class() -> Any:
    """wrapt's ``FunctionWrapper``, pickled and copied as the method it wraps: a
    bound method (``functools.partial(optim.load)``, ``store.load``) pickles as
    ``getattr(instance, name)``, as a plain bound method does."""
    global _WRAPPER
    if _WRAPPER is None:
        import copy

        import wrapt

        class BoundWrapper(wrapt.BoundFunctionWrapper):  # type: ignore[type-arg]
            def __reduce_ex__(self, protocol: Any) -> Any:
                if self._self_instance is None:  # through the class: a global
                    return self.__qualname__
                return getattr, (self._self_instance, self.__name__)

            def __copy__(self) -> Any:
                return self

            def __deepcopy__(self, memo: dict[int, Any]) -> Any:
                if self._self_instance is None:
                    return self
                return getattr(copy.deepcopy(self._self_instance, memo), self.__name__)

        class Wrapper(wrapt.FunctionWrapper):  # type: ignore[type-arg]
            __bound_function_wrapper__ = BoundWrapper

            def __get__(self, instance: Any, owner: Any = None) -> Any:
                if instance is not None:
                    return super().__get__(instance, owner)
                # Through the class, always the one object (wrapt binds anew each
                # time), so that pickle finds it by name and writes the global that
                # stock writes for pyro's function.
                if getattr(self, "_self_unbound", None) is None:
                    self._self_unbound: Any = super().__get__(None, owner)
                return self._self_unbound

            def __reduce_ex__(self, protocol: Any) -> Any:
                return self.__qualname__  # a global, looked up by name when loaded

            def __copy__(self) -> Any:
                return self

            def __deepcopy__(self, memo: dict[int, Any]) -> Any:
                return self

        _WRAPPER = Wrapper
    return _WRAPPER


def _version(distribution: str) -> str | None:
    """An installed distribution's version, read without importing it."""
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


class TargetStatus:
    """One row of :func:`status`: one method the fix repairs.

    Attributes:
        target (str): the method's dotted path, such as
            ``"pyro.nn.module.PyroModule.__getstate__"``.
        wrapped (bool): whether the repair is in place on that method now.
        needed (bool | None): whether this pyro-ppl, on this Python and torch, has a
            bug the repair fixes; ``None`` where that is unknown (a pyro-ppl release
            the repairs were not verified against, or none installed).
        note (str): why the repair is not in place, or ``""``.
        bugs (list[str]): the bugs the repair fixes that this pyro-ppl, Python and
            torch may have, one sentence each.
    """

    __slots__ = ("bugs", "needed", "note", "target", "wrapped")

    def __init__(
        self, target: str, wrapped: bool, needed: bool | None, note: str, bugs: list[str]
    ) -> None:
        self.target = target
        self.wrapped = wrapped
        self.needed = needed
        self.note = note
        #: The bugs this repair fixes that this pyro-ppl, Python and torch may have.
        self.bugs = bugs

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


class Status:
    """What is patched in this interpreter, per target (what :func:`status` returns).

    ``str()`` is the table ``pyro-pickle-fix status`` prints; :meth:`as_dict` gives
    the same as plain data (for JSON).

    Attributes:
        active (bool): whether the fix is on in this process (imported, and not
            turned off by ``PYRO_PICKLE_FIX=0`` or :func:`unpatch`).
        pyro (str | None): the installed pyro-ppl's version, or ``None``.
        torch (str | None): the installed torch's version, or ``None``.
        python (str): this Python's version, such as ``"3.11.7"``.
        targets (list[TargetStatus]): one row per repaired method.
        advisory (str | None): the published advisories against this torch's own
            weights-only loading (``torch.load(..., weights_only=True)``), or ``None``.
    """

    def __init__(
        self,
        pyro: str | None,
        python: str,
        active: bool,
        targets: list[TargetStatus],
        advisory: str | None = None,
        torch: str | None = None,
    ) -> None:
        self.pyro = pyro
        self.torch = torch
        self.python = python
        self.active = active
        self.targets = targets
        self.advisory = advisory

    def as_dict(self) -> dict[str, Any]:
        """The fields as plain data: ``targets`` as a list of dicts."""
        return {
            "pyro": self.pyro,
            "torch": self.torch,
            "python": self.python,
            "active": self.active,
            "targets": [row.as_dict() for row in self.targets],
            "advisory": self.advisory,
        }

    def __str__(self) -> str:
        answer = {True: "yes", False: "no", None: "unknown"}
        lines = [
            f"pyro-pickle-fix {'on' if self.active else 'off'} "
            f"(pyro-ppl {self.pyro or 'not installed'}, torch {self.torch or 'not installed'}, "
            f"Python {self.python})",
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
        # Attribute syntax, not a dict: the fields are read as attributes.
        return (
            f"Status(active={self.active!r}, pyro={self.pyro!r}, torch={self.torch!r}, "
            f"python={self.python!r}, targets=[{len(self.targets)} TargetStatus], "
            f"advisory={self.advisory!r})"
        )


def status() -> Status:
    """Per target: its dotted path, whether the repair is in place, and whether the
    installed pyro-ppl (on this Python and torch) has the bug it fixes (None when
    that pyro-ppl is not one the repairs were verified against).  Changes nothing."""
    version = _version("pyro-ppl")
    pyro = parse_version(version) if version else None
    python = sys.version_info[:3]
    torch_text = _version("torch")
    torch = parse_version(torch_text) if torch_text else None
    rows = []
    with _lock:
        active = _armed or trigger.activation_requested()
        for repair in repairs():
            wrapped = _in_place(repair)
            needed = None if pyro is None else repair.needed(pyro, python, torch)
            if wrapped and not active:
                note = "could not remove it: another library wraps it on top of ours"
            elif repair.target in _skipped:
                note = "left stock: " + _skipped[repair.target]
            elif pyro is None:
                note = "pyro-ppl is not installed"
            elif repair.package not in ("pyro-ppl", "torch") and not _version(repair.package):
                needed = False  # nothing of that engine's can serialize a guide here
                note = f"{repair.package} is not installed"
            elif not wrapped and active and repair.trigger not in sys.modules:
                note = f"waits for `import {repair.trigger}`"
            elif not wrapped and active:
                note = "not in place: call pyro_pickle_fix.patch() (a module was reloaded?)"
            else:
                note = ""
            bugs = [
                bug.summary
                for bug in repair.bugs
                if pyro is not None and bug.present(pyro, python, torch) is not False
            ]
            rows.append(TargetStatus(repair.dotted, wrapped, needed, note, bugs))
    from .loader import advisory

    return Status(
        version,
        ".".join(map(str, python)),
        active,
        rows,
        advisory(torch) if torch is not None else None,
        torch_text,
    )
