"""Check what ``python -m build`` made, before anyone installs it.

    python tools/check_dist.py DIST

The wheel holds every module of the package, ``py.typed``, the licence and the
``pyro-pickle-fix`` console script, and no tests; the sdist holds the package,
the tests, README, CHANGELOG and the licence.  Exit 1 with what is missing.
"""

from __future__ import annotations

import sys
import tarfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "pyro_pickle_fix"


def problems(dist: Path) -> list[str]:
    (wheel,) = dist.glob(f"{PACKAGE}-*.whl")
    (sdist,) = dist.glob(f"{PACKAGE}-*.tar.gz")
    modules = {path.relative_to(ROOT).as_posix() for path in (ROOT / PACKAGE).rglob("*.py")}
    found = []
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next((n for n in names if n.endswith(".dist-info/entry_points.txt")), None)
        scripts = archive.read(entry_points).decode() if entry_points else ""
    found += [f"wheel lacks {name}" for name in sorted((modules | {f"{PACKAGE}/py.typed"}) - names)]
    found += [f"wheel holds a test: {name}" for name in sorted(names) if name.startswith("tests/")]
    if not any(name.endswith("/LICENSE") for name in names):
        found.append("wheel lacks the licence")
    if "pyro-pickle-fix = pyro_pickle_fix.cli:main" not in scripts:
        found.append("wheel lacks the console script pyro-pickle-fix")
    with tarfile.open(sdist) as archive:
        top = archive.getnames()[0].split("/")[0]
        members = {name.partition("/")[2] for name in archive.getnames()}
    wanted = ["README.md", "CHANGELOG.md", "CONTRIBUTING.md", "LICENSE", "tests/conftest.py"]
    wanted += sorted(modules)
    wanted += [f"tests/{path.name}" for path in sorted((ROOT / "tests").glob("test_*.py"))]
    wanted += [f"docs/{path.name}" for path in sorted((ROOT / "docs").glob("*.md"))]
    found += [f"sdist {top} lacks {name}" for name in wanted if name not in members]
    return found


def main(dist: str) -> int:
    found = problems(Path(dist))
    for line in found:
        print(f"check_dist: {line}", file=sys.stderr)
    if not found:
        print(f"check_dist: wheel and sdist in {dist} hold what they should")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
