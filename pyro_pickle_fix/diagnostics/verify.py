"""``pyro-pickle-fix verify FILE...``: check a file before loading it.

Each file goes through the same checks as the two pyro loads
(``pyro.get_param_store().load()`` and ``PyroOptim.load()``), as a param-store
file and then as an optimizer file.  What a load would hand pyro is made on the
CPU and described, and nothing else: no param store, optimizer or global state
changes.  A file both loads refuse has its pickle read as opcodes
(:mod:`pickletools`), never run, to name what it would import: a whole guide, or
any object that only ``torch.load(path, weights_only=False)`` can load, runs
code from those modules when it is loaded.

Exit status: 0 every file loads; 1 a file is refused; 2 a file cannot be read.
"""

from __future__ import annotations

import json
import pickletools
import sys
from typing import cast

from ..errors import DamagedFileError, UntrustedContentError, UntrustedGlobalError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from typing import Any

LOADS, REFUSED, UNREADABLE = 0, 1, 2
STORE, OPTIM = "a param-store file", "an optimizer file"
#: How the user loads each kind, for the verdict.
HOW = {
    STORE: "pyro.get_param_store().load(path)",
    OPTIM: "optim.load(path)",
}


def checked_state(path: str, kind: str) -> Any:
    """The one place verify meets the loader: what the load of ``kind`` would hand
    pyro, read through every check of that load and built on the CPU (building
    touches no param store or optimizer).  Raises what the load raises."""
    from ..loader import load_optim_state, load_state

    return (load_state if kind == STORE else load_optim_state)(path, map_location="cpu")


class FileReport:
    """What :func:`verify` found in one file."""

    def __init__(self, path: str) -> None:
        self.path = path
        #: STORE, OPTIM, or None where no load takes the file
        self.kind: str | None = None
        self.code = LOADS
        #: why a load refused it, or why it cannot be read: one line each
        self.reasons: list[str] = []
        #: a param-store file's parameters: name, shape, dtype, constraint
        self.parameters: list[dict[str, Any]] = []
        #: an optimizer file's entries: parameter, state kinds, settings, scheduler
        self.optimizer: list[dict[str, Any]] = []
        #: what the pickle names that is neither data nor a tensor: it runs code
        self.imports: list[str] = []

    @property
    def verdict(self) -> str:
        return {LOADS: "loads", REFUSED: "refused", UNREADABLE: "cannot read"}[self.code]

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "verdict": self.verdict,
            "exit": self.code,
            "kind": self.kind,
            "reasons": self.reasons,
            "parameters": self.parameters,
            "optimizer": self.optimizer,
            "imports": self.imports,
        }

    def __str__(self) -> str:
        if self.code == LOADS:
            head = (
                f"{self.path}: {self.kind}: loads ({HOW[str(self.kind)]} accepts it; "
                "nothing was changed)"
            )
            return "\n".join([head, *self._contents()])
        lines = [f"{self.path}: {self.verdict}"]
        if self.imports:
            modules = sorted({name.rpartition(".")[0] for name in self.imports})
            lines += [
                "  only torch.load(path, weights_only=False) loads it (a whole guide or "
                "another object): unpickling it imports and calls",
                *(f"    {name}" for name in self.imports),
                f"  so loading it runs code from {', '.join(modules)}. Load it only if you "
                "trust whoever made it; nothing in it was run here.",
            ]
        lines += [f"  {reason}" for reason in self.reasons]
        return "\n".join(lines)

    def _contents(self) -> list[str]:
        if self.kind == STORE:
            rows = [["parameter", "shape", "dtype", "constraint"]]
            rows += [
                [p["name"], str(tuple(p["shape"])), p["dtype"], p["constraint"]]
                for p in self.parameters
            ]
        else:
            rows = [["parameter", "state", "settings", "scheduler"]]
            rows += [
                [
                    entry["parameter"],
                    ", ".join(entry["state"]) or "-",
                    ", ".join(f"{k}={v}" for k, v in entry["settings"].items()) or "-",
                    entry["scheduler"] or "-",
                ]
                for entry in self.optimizer
            ]
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        return [
            "  "
            + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
            for row in rows
        ]


def _describe_store(report: FileReport, state: dict[str, Any]) -> None:
    for name, tensor in state["params"].items():
        report.parameters.append(
            {
                "name": name,
                "shape": list(tensor.shape),
                "dtype": str(tensor.dtype).removeprefix("torch."),
                "constraint": repr(state["constraints"][name]),
            }
        )


#: The settings of a param group worth a column (the rest are the optimizer's defaults).
_SETTINGS = ("lr", "weight_decay", "momentum")


def _describe_optim(report: FileReport, state: dict[str, Any]) -> None:
    for name, entry in state.items():
        scheduler = None
        if isinstance(entry, dict) and "scheduler" in entry and "optimizer" in entry:
            scheduled = entry["scheduler"]
            scheduler = ", ".join(
                f"{key}={scheduled[key]}"
                for key in ("last_epoch", "base_lrs")
                if isinstance(scheduled, dict) and key in scheduled
            ) or ", ".join(sorted(map(str, scheduled)))
            entry = entry["optimizer"]
        kinds: dict[str, None] = {}
        settings: dict[str, Any] = {}
        if isinstance(entry, dict):
            for per_parameter in (entry.get("state") or {}).values():
                if isinstance(per_parameter, dict):
                    kinds.update(dict.fromkeys(map(str, per_parameter)))
            for group in entry.get("param_groups") or []:
                if isinstance(group, dict):
                    settings.update({k: group[k] for k in _SETTINGS if k in group})
        report.optimizer.append(
            {"parameter": name, "state": list(kinds), "settings": settings, "scheduler": scheduler}
        )


def _why(error: BaseException, kind: str) -> str:
    """The refusal's first sentence, less the file and kind that the report names."""
    text = str(error)
    text = text.partition(f" as {kind}: ")[2] or text
    cut = text.find(". ")
    return text if cut < 0 else text[: cut + 1]


def _data_global(name: str) -> bool:
    """A global that makes a tensor or plain data, or a constraint class the
    param store's load allows: naming it runs none of the file's code."""
    from ..loader import ALLOWED

    module, _, attribute = name.rpartition(".")
    return (
        name in ALLOWED
        or name in ("collections.OrderedDict", "torch.Tensor")
        or (module in ("builtins", "__builtin__") and attribute in ("set", "frozenset"))
        or (module == "torch._utils" and attribute.startswith("_rebuild_"))
        or (module == "torch" and (attribute.endswith("Storage") or attribute == "Size"))
        or name in ("torch._tensor._rebuild_from_type_v2", "torch.nn.parameter.Parameter")
    )


def _globals(pickle: bytes) -> Iterator[str]:
    """Every global the pickle names, read as opcodes: nothing is imported or run.
    Protocol 4's STACK_GLOBAL takes its names from the strings before it (read
    through the memo), as the unpickler does."""
    strings: list[Any] = []
    memo: dict[int, Any] = {}
    top: Any = None  # the string last pushed, or None after anything else
    for opcode, found, _ in pickletools.genops(pickle):
        name, argument = opcode.name, cast("Any", found)
        if name in ("GLOBAL", "INST"):
            yield str(argument).replace(" ", ".", 1)
        elif name == "STACK_GLOBAL" and len(strings) >= 2:
            yield f"{strings[-2]}.{strings[-1]}"
        elif "UNICODE" in name or name in ("STRING", "BINSTRING", "SHORT_BINSTRING"):
            top = argument
            strings.append(top)
            continue
        elif name == "MEMOIZE":
            memo[len(memo)] = top
        elif name in ("BINPUT", "LONG_BINPUT", "PUT"):
            memo[int(argument)] = top
        elif name in ("BINGET", "LONG_BINGET", "GET"):
            top = memo.get(int(argument))
            strings.append(top)
            continue
        if name not in ("MEMOIZE", "BINPUT", "LONG_BINPUT", "PUT"):
            top = None


#: How a file in torch's legacy format begins: its magic number, pickled (protocol 2).
LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19."


def _legacy(path: str) -> bool:
    try:
        with open(path, "rb") as file:
            return file.read(len(LEGACY_MAGIC)) == LEGACY_MAGIC
    except OSError:
        return False


def _pickle_of(path: str) -> bytes | None:
    """The pickle the loads read, from the archive as they read it (the loader's
    own reader, not :mod:`zipfile`, which checks what they do not, such as a
    record's CRC, and reads another end record than torch's); None where that
    reader refuses the archive (the loads' refusal says why)."""
    from ..loader.archive import Archive
    from ..loader.messages import STORE as STORE_KIND
    from ..loader.unpickler import MAX_PICKLE

    try:
        with open(path, "rb") as file:
            return Archive(file, path, STORE_KIND).small("data.pkl", MAX_PICKLE)
    except (UntrustedContentError, DamagedFileError, OSError):
        return None


def _scan(report: FileReport) -> None:
    """Name what a file both loads refused would import (read as opcodes, never
    run); the verdict and its reasons stay the loads' own."""
    pickle = _pickle_of(report.path)
    if pickle is None:
        if _legacy(report.path):
            report.reasons.append(
                "it is in torch's legacy format (torch.save(..., "
                "_use_new_zipfile_serialization=False)), which both loads refuse: save it "
                "again with torch.save's default format where you trust it"
            )
        return
    try:
        names = list(dict.fromkeys(_globals(pickle)))
    except (ValueError, EOFError, NotImplementedError):
        # A pickle pickletools cannot read to its end (a flipped bit): the loads
        # refused it already, and that is the verdict.
        return
    from ..loader import ALLOWED

    report.imports = [name for name in names if not _data_global(name)]
    if report.imports:
        return
    if any(name in ALLOWED for name in names):
        report.reasons.append(
            "it names only tensors, plain data and pyro's constraint classes (a checkpoint "
            "that embeds get_state(), say): load it with torch.load(path, weights_only=True) "
            "after torch.serialization.add_safe_globals(pyro_pickle_fix.safe_globals())"
        )
    else:
        report.reasons.append(
            "it names only tensors and plain data (a state_dict(), say): load it with "
            "torch.load(path, weights_only=True)"
        )


def verify_file(path: str) -> FileReport:
    """Run ``path`` through both loads' checks and describe it; changes nothing."""
    report = FileReport(path)
    try:
        with open(path, "rb"):
            pass
    except OSError as error:
        report.code = UNREADABLE
        report.reasons.append(f"cannot open it: {error.strerror or error}")
        return report
    refusals = []
    for kind in (STORE, OPTIM):
        try:
            state = checked_state(path, kind)
        except (UntrustedGlobalError, UntrustedContentError) as error:
            refusals.append(f"as {kind}: {_why(error, kind)}")
            continue
        except DamagedFileError as error:  # the same for both loads: no need to try the other
            report.code = UNREADABLE
            report.reasons.append(f"cannot read it: it is damaged or truncated: {error}")
            return report
        except OSError as error:
            report.code = UNREADABLE
            report.reasons.append(f"cannot read it: {error.strerror or error}")
            return report
        report.kind = kind
        (_describe_store if kind == STORE else _describe_optim)(report, state)
        return report
    report.code = REFUSED
    report.reasons = refusals
    _scan(report)
    return report


def verify(paths: Sequence[str]) -> list[FileReport]:
    """One :class:`FileReport` per path, in order."""
    return [verify_file(path) for path in paths]


def main(paths: Sequence[str], as_json: bool = False) -> int:
    """``verify FILE...``: print each report; the worst exit (2 > 1 > 0)."""
    reports = verify(paths)
    code = max(report.code for report in reports)
    if as_json:
        print(json.dumps({"files": [r.as_dict() for r in reports], "exit": code}))
    else:
        print("\n".join(map(str, reports)))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
