"""After the matrix: every mutant of tests/test_mutants.py was killed in some cell.

    python tools/mutants.py .nox/results

Each cell, and the ``engines`` session's Dask mutant, leaves pytest's JUnit report
there.  A cell skips a mutant whose repair has nothing to do in it (its bug is not
in that pyro-ppl, Python or torch); some other cell must kill it.  Prints where
each was killed, and exits 1 when one was killed nowhere.  Standard library only.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path

TEST = "test_mutant_is_killed["


def outcomes(results: Path) -> dict[str, dict[str, str]]:
    """mutant -> {report: "killed", "failed" or why it was skipped}"""
    found: dict[str, dict[str, str]] = {}
    for report in sorted(results.glob("*.xml")):
        for case in ET.parse(report).getroot().iter("testcase"):
            name = case.get("name", "")
            if not (case.get("classname", "").endswith("test_mutants") and name.startswith(TEST)):
                continue
            skipped = case.find("skipped")
            if skipped is not None:
                outcome = "skipped: " + skipped.get("message", "")
            elif case.find("failure") is not None or case.find("error") is not None:
                outcome = "failed"
            else:
                outcome = "killed"
            found.setdefault(name[len(TEST) : -1], {})[report.stem] = outcome
    return found


def main(results: str) -> int:
    found = outcomes(Path(results))
    if not found:
        print(f"mutants: no results in {results}; run the test matrix first", file=sys.stderr)
        return 1
    unkilled = 0
    for mutant, cells in found.items():
        killed = [cell for cell, outcome in cells.items() if outcome == "killed"]
        if killed:
            print(f"killed     {mutant}  in {', '.join(killed)}")
        else:
            unkilled += 1
            print(f"NOT KILLED {mutant}  in no cell: {sorted(set(cells.values()))}")
    print(f"mutants: {len(found) - unkilled} killed of {len(found)} across the matrix")
    return 1 if unkilled else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
