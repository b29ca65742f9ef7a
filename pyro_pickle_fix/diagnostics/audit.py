"""Audit a user's own object: does serializing it, path by path, change the live
object, and do the live object and the copy still work?

:func:`audit` runs in this interpreter against the fix as it is now (on or off).
``pyro-pickle-fix audit MODULE:CALLABLE`` runs ``python -m
pyro_pickle_fix.diagnostics.audit`` twice, in fresh interpreters without and
with the fix, and prints both side by side.
"""

from __future__ import annotations

import copy
import importlib
import io
import json
import pickle
import sys
import traceback

from ..errors import AuditInputError
from .fresh import REPORT_IT, SIDES, run_fresh, versions_line
from .snapshot import snapshot

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence
    from typing import Any

    Factory = Callable[[], Any]
    Call = Callable[[Any], Any]

#: How many changed attributes a row lists.
MAX_CHANGES = 5
PARAM_STORE = "param-store"


def _pickle(protocol: int) -> Callable[[Any], Any]:
    return lambda obj: pickle.loads(pickle.dumps(obj, protocol))


def _torch_save(obj: Any) -> Any:
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


def _cloudpickle(obj: Any) -> Any:
    import cloudpickle

    return cloudpickle.loads(cloudpickle.dumps(obj))


def _param_store(obj: Any) -> Any:
    # What pyro.get_param_store().save() writes; obj is audited for what it does to it.
    import pyro

    return _torch_save(pyro.get_param_store().get_state())


#: path -> round trip: serialize and load back, as a user does.
PATHS: dict[str, Callable[[Any], Any]] = {
    **{f"pickle{p}": _pickle(p) for p in range(2, pickle.HIGHEST_PROTOCOL + 1)},
    "torch.save": _torch_save,
    "deepcopy": copy.deepcopy,
    "copy": copy.copy,
    "cloudpickle": _cloudpickle,
    PARAM_STORE: _param_store,
}
#: path -> the module it needs beyond torch and pyro
_NEEDS = {"cloudpickle": "cloudpickle"}


def error_line(error: BaseException) -> str:
    """``Type: message``, as a traceback says it (the message's first line, where it
    has several), without the notes that follow it there: from Python 3.14 on, pickle
    adds one note per object on the way to what it could not save."""
    described = traceback.TracebackException(type(error), error, None)
    described.__notes__ = None  # documented (3.11+): None formats no notes
    return list(described.format_exception_only())[-1].strip().splitlines()[0]


class AuditRow:
    """One serialization path: what it did to the live object and whether both work."""

    __slots__ = ("changes", "copy_error", "live_error", "path", "saved", "skipped")

    def __init__(self, path: str) -> None:
        self.path = path
        self.skipped: str | None = None
        #: None when the path ran; else the error line
        self.saved: str | None = None
        #: readable lines: what changed in the live object
        self.changes: list[str] = []
        #: None: works; "not run": no call; else the error line
        self.live_error: str | None = "not run"
        self.copy_error: str | None = "not run"

    @property
    def exercised(self) -> bool:
        """Whether a call ran on the live object (the factory gave one)."""
        return self.skipped is None and self.live_error != "not run"

    @property
    def clean(self) -> bool:
        """Skipped, or the live object unchanged and, where a call exercised it,
        still working.  (A save that raises is clean when it leaves the live object
        as it was.)"""
        return self.skipped is not None or (
            not self.changes and self.live_error in (None, "not run")
        )

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AuditRow:
        row = cls(data["path"])
        for name in cls.__slots__:
            setattr(row, name, data[name])
        return row


def _versions() -> dict[str, str]:
    from importlib import metadata

    found = {"python": ".".join(map(str, sys.version_info[:3]))}
    for name in ("torch", "pyro-ppl", "wrapt"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


class AuditReport:
    """What :func:`audit` found: ``.rows`` (one per path), ``.as_dict()``, ``str()``."""

    def __init__(
        self,
        target: str,
        rows: list[AuditRow],
        fix_active: bool,
        notes: Sequence[str] = (),
        versions: dict[str, str] | None = None,
    ) -> None:
        self.target = target
        self.rows = rows
        self.fix_active = fix_active
        self.notes = list(notes)
        self.versions = versions if versions is not None else _versions()

    @property
    def clean(self) -> bool:
        """Every path left the live object unchanged and, where exercised, working."""
        return all(row.clean for row in self.rows)

    @property
    def exercised(self) -> bool:
        """A call exercised the live object on every path that ran."""
        return all(row.exercised for row in self.rows if row.skipped is None)

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "fix_active": self.fix_active,
            "clean": self.clean,
            "exercised": self.exercised,
            "notes": self.notes,
            "versions": self.versions,
            "rows": [row.as_dict() for row in self.rows],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AuditReport:
        rows = [AuditRow.from_dict(row) for row in data["rows"]]
        return cls(data["target"], rows, data["fix_active"], data["notes"], data["versions"])

    def __str__(self) -> str:
        return "\n".join(
            [
                f"pyro-pickle-fix audit of {self.target} "
                f"(fix {'on' if self.fix_active else 'off'})",
                "  " + ", ".join(f"{k} {v}" for k, v in self.versions.items()),
                *(f"  note: {note}" for note in self.notes),
                "",
                *table(self.rows, "  "),
                "",
                "  "
                + (
                    "NOT SAFE: a path changed the live object or broke it"
                    if not self.clean
                    else "every path left the live object unchanged and working"
                    if self.exercised
                    else f"every path left the live object unchanged; {NOT_EXERCISED}"
                ),
            ]
        )

    def __repr__(self) -> str:
        return f"AuditReport({self.target!r}, clean={self.clean})"


#: What a report says where the factory gave no call: nothing ran the object.
NOT_EXERCISED = (
    "whether it still works was not exercised: return (object, call) from the "
    "factory, where call(obj) runs it (one SVI step, say)"
)


def _cell(error: str | None, exercised: bool = True) -> str:
    if not exercised:
        return "not exercised"
    return {None: "yes", "not run": "-"}.get(error, "no")


def table(rows: Iterable[AuditRow], indent: str) -> list[str]:
    """The audit table: a line per path, then each change and error on its own line."""
    lines = [f"{indent}{'path':13}{'saves':7}{'live unchanged':16}{'live works':15}copy works"]
    for row in rows:
        if row.skipped is not None:
            lines.append(f"{indent}{row.path:13}skipped: {row.skipped}")
            continue
        lines.append(
            f"{indent}{row.path:13}{_cell(row.saved):7}{'no' if row.changes else 'yes':16}"
            f"{_cell(row.live_error, row.exercised):15}{_cell(row.copy_error, row.exercised)}"
        )
        details = [f"save: {row.saved}"] if row.saved else []
        details += [f"changed: {change}" for change in row.changes[:MAX_CHANGES]]
        if len(row.changes) > MAX_CHANGES:
            details.append(f"changed: ... and {len(row.changes) - MAX_CHANGES} more")
        for name, error in (("live", row.live_error), ("copy", row.copy_error)):
            if error not in (None, "not run"):
                details.append(f"{name}: {error}")
        lines.extend(f"{indent}{'':13}{detail}" for detail in details)
    return lines


def _unpack(made: Any) -> tuple[Any, Call | None]:
    if isinstance(made, tuple) and len(made) == 2 and callable(made[1]):
        return made[0], made[1]
    return made, None


def _attempt(action: Callable[[], object]) -> str | None:
    try:
        action()
    except Exception as error:
        return error_line(error)
    return None


def _is_pyro_object(obj: Any) -> bool:
    import torch

    return isinstance(obj, torch.nn.Module) or any(
        (cls.__module__ or "").split(".")[0] == "pyro" for cls in type(obj).__mro__
    )


def _missing(path: str) -> str | None:
    needed = _NEEDS.get(path)
    if needed is None:
        return None
    try:
        importlib.import_module(needed)
    except ImportError:
        return f"{needed} is not installed"
    return None


def _make(factory: Factory) -> tuple[Any, Call | None]:
    try:
        made = factory()
    except Exception as error:
        raise AuditInputError(f"the factory raised {error_line(error)}") from error
    return _unpack(made)


def audit(
    factory: Factory,
    call: Call | None = None,
    paths: Sequence[str] | None = None,
    target: str | None = None,
) -> AuditReport:
    """Serialize a fresh object from ``factory`` along each path; report per path
    whether it saved, what changed in the live object (and in the param store),
    and whether ``call(live)`` and ``call(copy)`` still work.

    ``factory()`` returns the object, or ``(object, call)``.  ``paths`` default to
    every path in :data:`PATHS`.  Runs against the fix as it is in this
    interpreter; raises :class:`AuditInputError` if the factory fails.
    """
    import pyro

    names = list(PATHS) if paths is None else list(paths)
    unknown = [name for name in names if name not in PATHS]
    if unknown:
        raise AuditInputError(f"unknown path {', '.join(unknown)}; choose from {', '.join(PATHS)}")
    notes: list[str] = []
    rows = []
    for name in names:
        row = AuditRow(name)
        rows.append(row)
        row.skipped = _missing(name)
        if row.skipped:
            continue
        obj, made_call = _make(factory)
        use = call or made_call
        if not notes and not _is_pyro_object(obj):
            notes.append(
                f"{type(obj).__module__}.{type(obj).__qualname__} is not a Pyro object; "
                "audited anyway"
            )
        store = pyro.get_param_store()
        before = snapshot(obj, param_store=store)
        result = None
        try:
            result = PATHS[name](obj)
        except Exception as error:
            row.saved = error_line(error)
        row.changes = before.diff(snapshot(obj, param_store=store))
        if use is not None:
            row.live_error = _attempt(lambda: use(obj))  # noqa: B023
            if row.saved is None and name != PARAM_STORE:
                row.copy_error = _attempt(lambda: use(result))  # noqa: B023
    fix = sys.modules.get("pyro_pickle_fix")
    active = bool(fix is not None and fix.is_patched())
    label = target or str(getattr(factory, "__qualname__", None) or repr(factory))
    return AuditReport(label, rows, active, notes)


def load_factory(spec: str) -> Factory:
    """``MODULE:CALLABLE`` -> the callable; :class:`AuditInputError` says what is wrong."""
    module_name, colon, attribute = spec.partition(":")
    if not colon or not module_name or not attribute:
        raise AuditInputError(f"{spec!r} is not MODULE:CALLABLE (for example mymodule:make_guide)")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:
        raise AuditInputError(
            f"cannot import {module_name!r}: {error_line(error)} "
            "(is its directory on PYTHONPATH, or is it installed?)"
        ) from error
    found: Any = module
    for part in attribute.split("."):
        if not hasattr(found, part):
            raise AuditInputError(f"module {module_name!r} has no attribute {attribute!r}")
        found = getattr(found, part)
    if not callable(found):
        raise AuditInputError(
            f"{spec} is a {type(found).__name__}, not a callable; name a zero-argument "
            "function that returns the object to audit"
        )
    return found  # type: ignore[no-any-return]


def audit_report(target: str, without: AuditReport, with_fix: AuditReport) -> str:
    """The table ``audit`` prints: each path without and with the fix, and a verdict."""
    lines = [
        f"pyro-pickle-fix audit: {target}, serialized along each path without and with the fix",
        versions_line(with_fix.versions),
        *(f"  note: {note}" for note in dict.fromkeys(without.notes + with_fix.notes)),
    ]
    for (label, _), side in zip(SIDES, (without, with_fix), strict=True):
        lines += ["", f"  {label}", *table(side.rows, "    ")]
    lines.append("")
    if with_fix.clean and not with_fix.exercised:
        stock = "does too" if without.clean else "does not"
        lines.append(
            f"  Serializing {target} leaves it unchanged here with pyro-pickle-fix on "
            f"every path (without it, it {stock}); {NOT_EXERCISED}."
        )
    elif with_fix.clean:
        stock = "is" if without.clean else "is not"
        lines.append(
            f"  Serializing {target} is safe here with pyro-pickle-fix on every path "
            f"(without it, it {stock})."
        )
        unsaved = [row.path for row in with_fix.rows if row.skipped is None and row.saved]
        if unsaved:
            lines.append(
                f"  (It leaves the object as it was, but cannot save it by: {', '.join(unsaved)}.)"
            )
    else:
        paths = ", ".join(row.path for row in with_fix.rows if not row.clean)
        lines.append(
            f"  NOT SAFE with the fix on: {paths}. If the change is in a Pyro class, "
            f"{REPORT_IT[0].lower()}{REPORT_IT[1:]} If it is in your own class, its "
            "__getstate__/__reduce__ changes the live object: make it work on a copy."
        )
    return "\n".join(lines)


def audit_main(spec: str, paths: Sequence[str], as_json: bool, python: str = sys.executable) -> int:
    """``audit MODULE:CALLABLE``: 0 when, with the fix, every path leaves the object
    unchanged and working; 1 when not; 2 when the object could not be had."""
    sides = []
    for _, fix in reversed(SIDES):  # with the fix first: bad input stops before a second run
        outcome = run_fresh("pyro_pickle_fix.diagnostics.audit", [spec, *paths], fix, python)
        if "crashed" in outcome:
            print(outcome["crashed"], file=sys.stderr)
            return 2 if outcome["exit"] == 2 else 1
        sides.append(AuditReport.from_dict(outcome))
    with_fix, without = sides
    if as_json:
        print(json.dumps({"without_fix": without.as_dict(), "with_fix": with_fix.as_dict()}))
    else:
        print(audit_report(spec, without, with_fix))
    return 0 if with_fix.clean else 1


def main(argv: Sequence[str]) -> int:
    """``python -m pyro_pickle_fix.diagnostics.audit MODULE:CALLABLE [PATH ...]``: one audit as
    JSON on stdout (exit 0), or one error line on stderr (exit 2)."""
    spec, *paths = argv
    try:
        report = audit(load_factory(spec), paths=paths or None, target=spec)
    except AuditInputError as error:
        print(f"pyro-pickle-fix: error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(report.as_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
