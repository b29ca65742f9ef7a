"""Fresh virtual environments with this checkout installed non-editable, for the
start-up tests and benchmark.  Standard library only.

torch, pyro-ppl, wrapt and the rest are not reinstalled: the new environment
sees them through a .pth file naming a directory of links into the running
environment's site-packages (minus pyro-pickle-fix and any sitecustomize).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build_wheel(scratch: Path) -> Path:
    """A wheel of this checkout, built without touching the checkout."""
    source = scratch / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".*", "build", "*.egg-info"))
    out = scratch / "wheel"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-w",
            str(out),
            str(source),
        ],
        check=True,
    )
    (wheel,) = out.glob("pyro_pickle_fix-*.whl")
    return wheel


def link_dependencies(into: Path) -> Path:
    """Links to everything this environment has installed, except our package
    (from every site-packages on sys.path: the matrix shares torch through a .pth)."""
    into.mkdir(parents=True, exist_ok=True)
    own = Path(sysconfig.get_paths()["purelib"])
    sites = [own, *(Path(p) for p in sys.path if p.endswith("site-packages") and Path(p) != own)]
    for site in sites:
        if not site.is_dir():
            continue
        for entry in site.iterdir():
            name = entry.name.lower()
            skip = "pyro_pickle_fix" in name or "pyro-pickle-fix" in name
            skip = skip or name.endswith(".pth") or name.startswith("sitecustomize")
            if not skip and not (into / entry.name).exists():
                (into / entry.name).symlink_to(entry)
    return into


def bare_env(root: Path, dependencies: Path, *extra: Path) -> tuple[str, Path]:
    """A new environment at ``root`` that sees ``dependencies`` (and ``extra``
    directories) but not this package; (python, site-packages)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    python = str(root / "bin" / "python")
    site = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    (site / "_test_dependencies.pth").write_text("".join(f"{p}\n" for p in (dependencies, *extra)))
    return python, site


def make_env(root: Path, wheel: Path, dependencies: Path) -> tuple[str, Path]:
    """A new environment at ``root`` with the wheel installed; (python, site-packages)."""
    python, site = bare_env(root, dependencies)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            python,
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            str(wheel),
        ],
        check=True,
    )
    return python, site
