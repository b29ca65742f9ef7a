#!/usr/bin/env python3
"""Set-up and the everyday commands, from a fresh clone with only python3:

    python3 dev.py check    # the main job: does saving a guide corrupt it here?
    python3 dev.py test     # linters + the test suite in .venv (12 min 50 s on
                            # 2 cores; with CI=true, the fast tests only: 7 min)
    python3 dev.py matrix   # the release check, every Python x pyro-ppl x wrapt,
                            # the engines (Ray, Dask), and the compatibility table
                            # (32 min on 2 cores after `test`, as in CI; the
                            # whole of .ci/run from a fresh clone: 39 min)
    python3 dev.py mutants  # the mutation check alone, in .venv: leaving out any
                            # repair, or its requires or check, must fail a test
                            # (tests/test_mutants.py; test and every matrix cell run
                            # it too, and matrix ends by checking that each mutant
                            # was killed in some cell: tools/mutants.py)

Each creates (or reuses) ``.venv`` and installs what it needs into it.  torch is
pinned to 2.13.0: on this project's machines an unpinned torch pulls a multi-GB
CUDA build.  Arguments after the command go to pytest (``test``, ``mutants``: e.g.
``-k PyroModule``) or nox (``matrix``).
"""

from __future__ import annotations

import ast
import fcntl
import functools
import glob
import hashlib
import os
import shutil
import subprocess
import sys
import time
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PYTHON = VENV / "bin" / "python"
# pyro-ppl 1.9.1: the release most users are pinned to, and one with every bug.
REQUIREMENTS = ["torch==2.13.0", "pyro-ppl==1.9.1", "nox>=2024.3", "-e", ".[test,lint]"]


def ensure_venv() -> None:
    stamp = VENV / ".dev-stamp"
    wanted = hashlib.sha256(
        (ROOT / "pyproject.toml").read_bytes() + repr(REQUIREMENTS).encode()
    ).hexdigest()
    if PYTHON.exists() and stamp.exists() and stamp.read_text() == wanted:
        return
    print(f"dev.py: setting up {VENV}", flush=True)
    venv.create(VENV, with_pip=True, clear=PYTHON.exists())
    pip = [str(PYTHON), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, *REQUIREMENTS], cwd=ROOT, check=True)
    stamp.write_text(wanted)


def run(*command: str, env: dict[str, str] | None = None) -> int:
    print("dev.py: " + " ".join(command), flush=True)
    start = time.monotonic()
    code = subprocess.run(command, cwd=ROOT, check=False, env=env).returncode
    print(f"dev.py: exit {code} after {time.monotonic() - start:.0f} s", flush=True)
    return code


#: Makes a CPython X.Y from Debian's packages and prints its path (cached after the
#: first run): where the project's ``shared/`` sits beside the clone, as in CI.
DEBIAN_PYTHON = ROOT.parent / "shared" / "tools" / "debian-python"


def nox_pythons(noxfile: Path = ROOT / "noxfile.py") -> list[str]:
    """The Pythons the matrix runs (``PYTHONS`` in noxfile.py), read without importing
    it: noxfile.py needs nox, which only ``.venv`` has."""
    for node in ast.parse(noxfile.read_text()).body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            target = node.targets[0] if isinstance(node, ast.Assign) else node.target
            if isinstance(target, ast.Name) and target.id == "PYTHONS" and node.value:
                return [str(version) for version in ast.literal_eval(node.value)]
    raise RuntimeError(f"{noxfile} has no PYTHONS")


@functools.cache
def interpreters_on_path(
    pythons: tuple[str, ...] | None = None,
    provider: Path = DEBIAN_PYTHON,
    links: Path = ROOT / ".nox" / "interpreters",
) -> dict[str, str]:
    """The environment for nox, with a ``python3.X`` on PATH for every Python of the
    matrix where one can be had (nox looks for ``python3.X`` there): pyenv's Pythons
    (its shims answer only for the selected version), then, for a version neither
    PATH nor pyenv has, the one ``provider`` makes (``debian-python X.Y``), linked as
    ``links/python3.X``.  Any CPython of that version will do."""
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    found = sorted(glob.glob(os.path.join(root, "versions", "3.*", "bin")))
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([*found, env.get("PATH", "")])
    missing = [
        v for v in pythons or nox_pythons() if not shutil.which(f"python{v}", path=env["PATH"])
    ]
    if missing and provider.is_file():
        links.mkdir(parents=True, exist_ok=True)
        with (links / ".lock").open("w") as lock:
            # One provider at a time, across the torch builder and the matrix: two
            # debian-python runs at once both install patchelf, and apt has one lock.
            fcntl.flock(lock, fcntl.LOCK_EX)
            _provide(missing, provider, links)
        env["PATH"] = os.pathsep.join([str(links), env["PATH"]])
    return env


def _provide(missing: list[str], provider: Path, links: Path) -> None:
    """Link ``links/python3.X`` to what ``provider X.Y`` makes, for each missing version."""
    for version in missing:
        print(f"dev.py: no python{version} on PATH or in pyenv: {provider} {version}", flush=True)
        made = subprocess.run(
            ["bash", str(provider), version], capture_output=True, text=True, check=False
        )
        if made.returncode:
            # nox then reports the interpreter missing, for that version's sessions only.
            print(f"dev.py: {provider} {version} failed: {made.stderr.strip()}", flush=True)
            continue
        # Made aside and renamed into place: the torch builder and the matrix may
        # both be here at once.
        aside = links / f".python{version}.{os.getpid()}"
        aside.unlink(missing_ok=True)
        aside.symlink_to(made.stdout.strip().splitlines()[-1])
        os.replace(aside, links / f"python{version}")


def test(args: list[str]) -> int:
    linters = [
        (str(VENV / "bin" / "ruff"), "check", "."),
        (str(VENV / "bin" / "ruff"), "format", "--check", "."),
        (str(VENV / "bin" / "mypy"),),
    ]
    failed = [" ".join([Path(c[0]).name, *c[1:]]) for c in linters if run(*c)]
    if os.environ.get("CI") == "true" and not args:
        # CI runs the matrix next: its first cell runs the slow tests and the mutation
        # check on the built wheel, on this same Python, torch and pyro-ppl.  Its torch
        # builds download meanwhile.
        args = ["-m", "not slow and not mutants"]
        start_torch_builds()
    suite = run(str(PYTHON), "-m", "pytest", "-n", "2", *args)
    if failed:
        print(f"dev.py: linters failed: {failed}", file=sys.stderr)
    return suite or int(bool(failed))


TORCH_LOG = ROOT / ".nox" / "torch.log"


def start_torch_builds() -> subprocess.Popen[bytes] | None:
    """Start building the matrix's torch environments (nox's ``torch`` session,
    ~1-6 minutes of download each) in the background, unless a build started
    earlier is still running; its process, or None."""
    TORCH_LOG.parent.mkdir(exist_ok=True)
    # The builder holds this flock for its whole life (the kernel drops it when the
    # builder exits, however it exits): a second start finds it taken.
    lock = (ROOT / ".nox" / "torch-builds.lock").open("w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        return None
    print(f"dev.py: nox --sessions torch (in the background, log in {TORCH_LOG})", flush=True)
    with lock, TORCH_LOG.open("w") as log:
        # The builder finds its interpreters itself: making one (debian-python) takes
        # a minute or more that the caller need not wait for.
        return subprocess.Popen(
            [sys.executable, str(ROOT / "dev.py"), "torch-builds"],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            pass_fds=(lock.fileno(),),
        )


def torch_builds(args: list[str]) -> int:
    """(Started by :func:`start_torch_builds`.)  Build the torch environments, once
    every Python of the matrix is on PATH; the builder's lock stays held through
    the exec."""
    nox = str(VENV / "bin" / "nox")
    os.execve(nox, [nox, "--sessions", "torch", *args], interpreters_on_path())


def matrix(args: list[str]) -> int:
    # torch for every Python is built by a second nox process while the first runs
    # the cells that already have theirs (in CI it started during `test`).
    builds = start_torch_builds()
    sessions = ["release", "startup", "tests", "engines"]
    code = run(
        str(VENV / "bin" / "nox"), "--sessions", *sessions, *args, env=interpreters_on_path()
    )
    if builds is not None and builds.wait():
        print(TORCH_LOG.read_text()[-5000:], file=sys.stderr)
        code = code or builds.returncode
    table = run(str(PYTHON), "tools/compat_table.py", ".nox/results", "docs/compatibility.md")
    # A mutant each cell skipped (its bug is in none of them) was never tested.
    killed = run(str(PYTHON), "tools/mutants.py", ".nox/results")
    return code or table or killed


def mutants(args: list[str]) -> int:
    pytest = [str(PYTHON), "-m", "pytest", "-n", "2", "-p", "no:cacheprovider"]
    return run(*pytest, "tests/test_mutants.py", *args)


def main(argv: list[str]) -> int:
    commands = {"test": test, "matrix": matrix, "mutants": mutants, "torch-builds": torch_builds}
    if not argv or argv[0] not in ("check", *commands):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    ensure_venv()
    os.environ.pop("PYRO_PICKLE_FIX", None)  # the suite decides per test
    if argv[0] == "check":
        return run(str(PYTHON), "-m", "pyro_pickle_fix", "check", *argv[1:])
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
