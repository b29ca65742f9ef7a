"""``pyro-pickle-fix check``: the audit of the built-in tutorial EasyGuide along
``torch.save`` (``python -m pyro_pickle_fix.diagnostics.tutorial``), in two fresh
interpreters, without and with the fix, side by side."""

from __future__ import annotations

import json
import sys

from .fresh import REPORT_IT, SIDES, run_fresh, versions_line

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any


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
        versions_line(versions),
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
        lines.append(f"  NOT SAFE: the fix did not protect the guide here. {REPORT_IT}")
    return "\n".join(lines)


def main(python: str = sys.executable, as_json: bool = False) -> int:
    """Run both scenarios, print the table (or JSON); 0 when the fix leaves this
    environment safe."""
    without, with_fix = (
        run_fresh("pyro_pickle_fix.diagnostics.tutorial", [], fix, python) for _, fix in SIDES
    )
    if as_json:
        print(json.dumps({"without_fix": without, "with_fix": with_fix, "safe": safe(with_fix)}))
    else:
        print(report(without, with_fix))
    return 0 if safe(with_fix) else 1
