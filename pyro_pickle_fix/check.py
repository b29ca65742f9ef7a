"""``check`` and ``audit`` on the command line: the same work in two fresh
interpreters, one without the fix and one with it, side by side.

``check`` is the audit of the built-in tutorial EasyGuide along ``torch.save``
(``python -m pyro_pickle_fix.scenario``); ``audit MODULE:CALLABLE`` is the audit
of the user's own object along every path (``python -m pyro_pickle_fix.auditing``).
The fix is switched by ``PYRO_PICKLE_FIX``, as for any program.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from .auditing import AuditReport, table

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any

SIDES = (("without the fix", False), ("with the fix", True))


def run_fresh(module: str, args: Sequence[str], fix: bool, python: str = sys.executable) -> Any:
    """``python -m module args`` with the fix on or off: the JSON it prints last, or
    ``{"crashed": line, "exit": code}`` with its last stderr line."""
    env = dict(os.environ, PYRO_PICKLE_FIX="1" if fix else "0")
    done = subprocess.run(
        [python, "-m", module, *args], env=env, capture_output=True, text=True, check=False
    )
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = done.stderr.strip().splitlines()[-1:] or [f"exit code {done.returncode}"]
        return {"crashed": tail[0], "exit": done.returncode}
    return json.loads(lines[-1])


def safe(outcome: Mapping[str, Any]) -> bool:
    """The original kept its state and trains, and the loaded copy trains."""
    if "crashed" in outcome:
        return False
    original = outcome["original"]
    return bool(original["ok"] and original["unchanged"] and outcome["loaded"]["ok"])


def report(without: Mapping[str, Any], with_fix: Mapping[str, Any]) -> str:
    """The table ``check`` prints."""
    versions = with_fix.get("versions") or without.get("versions") or {}
    lines = [
        "pyro-pickle-fix check: train an EasyGuide, torch.save it, load it, train both",
        _versions_line(versions),
        f"  this environment has the bug: {'no' if safe(without) else 'yes'}",
        "",
        f"  {'':18}{'original intact':18}loaded copy works",
    ]
    for (label, _), outcome in zip(SIDES, (without, with_fix), strict=True):
        if "crashed" in outcome:
            lines.append(f"  {label:18}run failed: {outcome['crashed']}")
            continue
        original, loaded = outcome["original"], outcome["loaded"]
        intact = "yes" if original["ok"] and original["unchanged"] else "no"
        lines.append(f"  {label:18}{intact:18}{'yes' if loaded['ok'] else 'no'}")
        for name, side in (("original", original), ("loaded copy", loaded)):
            if side["error"]:
                lines.append(f"  {'':18}{name}: {side['error']}")
    lines.append("")
    if safe(with_fix):
        lines.append("  Saving a guide is safe in this environment with pyro-pickle-fix.")
    else:
        lines.append(f"  NOT SAFE: the fix did not protect the guide here. {_REPORT_IT}")
    return "\n".join(lines)


_REPORT_IT = (
    "Run `python -m pyro_pickle_fix status` and report both outputs "
    "to the pyro-pickle-fix issue tracker."
)


def _versions_line(versions: Mapping[str, str]) -> str:
    return "  " + ", ".join(f"{name} {version}" for name, version in versions.items())


def main(python: str = sys.executable, as_json: bool = False) -> int:
    """Run both scenarios, print the table (or JSON); 0 when the fix leaves this
    environment safe."""
    without, with_fix = (run_fresh("pyro_pickle_fix.scenario", [], fix, python) for _, fix in SIDES)
    if as_json:
        print(json.dumps({"without_fix": without, "with_fix": with_fix, "safe": safe(with_fix)}))
    else:
        print(report(without, with_fix))
    return 0 if safe(with_fix) else 1


def audit_report(target: str, without: AuditReport, with_fix: AuditReport) -> str:
    """The table ``audit`` prints: each path without and with the fix, and a verdict."""
    lines = [
        f"pyro-pickle-fix audit: {target}, serialized along each path without and with the fix",
        _versions_line(with_fix.versions),
        *(f"  note: {note}" for note in dict.fromkeys(without.notes + with_fix.notes)),
    ]
    for (label, _), side in zip(SIDES, (without, with_fix), strict=True):
        lines += ["", f"  {label}", *table(side.rows, "    ")]
    lines.append("")
    if with_fix.clean:
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
            f"{_REPORT_IT[0].lower()}{_REPORT_IT[1:]} If it is in your own class, its "
            "__getstate__/__reduce__ changes the live object: make it work on a copy."
        )
    return "\n".join(lines)


def audit_main(spec: str, paths: Sequence[str], as_json: bool, python: str = sys.executable) -> int:
    """``audit MODULE:CALLABLE``: 0 when, with the fix, every path leaves the object
    unchanged and working; 1 when not; 2 when the object could not be had."""
    sides = []
    for _, fix in reversed(SIDES):  # with the fix first: bad input stops before a second run
        outcome = run_fresh("pyro_pickle_fix.auditing", [spec, *paths], fix, python)
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
