"""``pyro-pickle-fix check``: the audit of the built-in tutorial EasyGuide along
``torch.save`` (``python -m pyro_pickle_fix.diagnostics.tutorial``), in two fresh
interpreters, without and with the fix, side by side."""

from __future__ import annotations

import json
import sys

from .audit import MAX_CHANGES
from .fresh import REPORT_IT, SIDES, run_fresh, versions_line

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any


def safe(outcome: Mapping[str, Any]) -> bool:
    """The original kept its state and trains, the loaded copy trains, an
    AutoGuide keeps its model, and both loads take pyro's files and refuse a file
    that names anything else."""
    if "crashed" in outcome:
        return False
    original = outcome["original"]
    kept = original["ok"] and original["unchanged"] and outcome["loaded"]["ok"]
    autoguide = outcome.get("autoguide", {})
    if autoguide.get("changes") or autoguide.get("error"):
        return False
    loads = outcome.get("loads", {}).values()
    return bool(kept) and all(
        load["genuine"] == "loads" and load["foreign"] != "loads" for load in loads
    )


#: What the probe file names beyond tensors and plain data (tutorial.loads_here): a
#: harmless constructor, called if and only if a load trusts the file.
PROBE_GLOBAL = "datetime.date"
WEAKREF_LOST = ".__dict__: lost 'unconstrained'"


def summarize(changes: Sequence[str]) -> list[str]:
    """The changes in a few lines: every Parameter that lost pyro's weakref in one."""
    lost = [change for change in changes if change.endswith(WEAKREF_LOST)]
    lines = [change for change in changes if not change.endswith(WEAKREF_LOST)][:MAX_CHANGES]
    if lost:
        noun = "Parameter" if len(lost) == 1 else "Parameters"
        lines.append(f"{len(lost)} {noun} lost pyro's 'unconstrained' weakref")
    return lines


def _load_line(outcome: Mapping[str, str]) -> str:
    foreign = outcome["foreign"]
    if foreign == "loads":
        foreign = (
            "builds it: the load trusts the file, and would run whatever a crafted "
            "file names (os.system, say)"
        )
    return f"a file pyro wrote: {outcome['genuine']}; a file naming {PROBE_GLOBAL}: {foreign}"


def what_it_saw(outcome: Mapping[str, Any]) -> list[str]:
    """What one side saw: what changed in the live guides, what then failed, and
    what the two loads did."""
    if "crashed" in outcome:
        return [f"run failed: {outcome['crashed']}"]
    original = outcome["original"]
    lines = ["the EasyGuide, after torch.save:"]
    changes = summarize(original.get("changes", []))
    lines += [f"  changed: {change}" for change in changes] or ["  nothing changed"]
    lines.append(
        f"  then: its next SVI step fails: {original['error']}"
        if original["error"]
        else "  then: it trains on"
    )
    autoguide = outcome.get("autoguide")
    if autoguide is not None:
        lines.append("an AutoNormal, after torch.save:")
        changes = summarize(autoguide["changes"])
        lines += [f"  changed: {change}" for change in changes] or ["  nothing changed"]
        lines.append(
            f"  then: guide.model raises {autoguide['error']}"
            + (" (_model was set to None)" if any("'_model'" in c for c in changes) else "")
            if autoguide["error"]
            else "  then: guide.model answers"
        )
    for name, load in outcome.get("loads", {}).items():
        lines.append(f"{name} load(): {_load_line(load)}")
    return lines


def report(without: Mapping[str, Any], with_fix: Mapping[str, Any]) -> str:
    """The table ``check`` prints, then what each side saw."""
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
    pyro = versions.get("pyro-ppl", "?")
    for (label, _), outcome in zip(SIDES, (without, with_fix), strict=True):
        lines += ["", f"  What pyro-ppl {pyro} did here {label}:"]
        lines += [f"    {line}" for line in what_it_saw(outcome)]
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
