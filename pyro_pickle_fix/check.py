"""``python -m pyro_pickle_fix check``: run the reproduction without and with the fix.

Each run is a fresh interpreter (``python -m pyro_pickle_fix.scenario``) so the
two cannot influence each other; the fix is switched by ``PYRO_PICKLE_FIX``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any


def run_scenario(fix: bool, python: str = sys.executable) -> dict[str, Any]:
    """The reproduction's outcome in a fresh interpreter, with the fix on or off."""
    env = dict(os.environ, PYRO_PICKLE_FIX="1" if fix else "0")
    done = subprocess.run(
        [python, "-m", "pyro_pickle_fix.scenario"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = done.stderr.strip().splitlines()[-1:] or [f"exit code {done.returncode}"]
        return {"crashed": tail[0]}
    outcome: dict[str, Any] = json.loads(lines[-1])
    return outcome


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
        "  " + ", ".join(f"{name} {version}" for name, version in versions.items()),
        f"  this environment has the bug: {'no' if safe(without) else 'yes'}",
        "",
        f"  {'':18}{'original intact':18}loaded copy works",
    ]
    for label, outcome in (("without the fix", without), ("with the fix", with_fix)):
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
        lines.append(
            "  NOT SAFE: the fix did not protect the guide here. Run "
            "`python -m pyro_pickle_fix status` and report both outputs."
        )
    return "\n".join(lines)


def main(python: str = sys.executable, as_json: bool = False) -> int:
    """Run both scenarios, print the table (or JSON); 0 when the fix leaves this
    environment safe."""
    without = run_scenario(False, python)
    with_fix = run_scenario(True, python)
    if as_json:
        print(json.dumps({"without_fix": without, "with_fix": with_fix, "safe": safe(with_fix)}))
    else:
        print(report(without, with_fix))
    return 0 if safe(with_fix) else 1
