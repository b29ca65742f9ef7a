"""The linters and the test matrix.

``python3 dev.py matrix`` runs them all, in order: ``release`` (builds the sdist
and the wheel that every other session installs), ``startup`` on every Python,
``tests`` on every cell, and ``engines``.  (``python3 dev.py test`` runs the
linters and the suite in ``.venv``, without nox.)  The cells of MUTANT_CELLS run
the mutation check (tests/test_mutants.py) with the rest of their tests, ``engines``
its Dask mutant, and each leaves a JUnit report in ``.nox/results`` for
tools/mutants.py.

torch is always pinned (an unpinned torch is a multi-GB CUDA build of whatever
is newest): each Python has its own torch, from the oldest the package supports
to the newest, installed once into ``.nox/torch-VERSION-pyX.Y``; each cell sees
it through a ``.pth`` file instead of installing its own.
"""

from __future__ import annotations

import fcntl
import glob
import json
import os
import shutil

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["release", "startup", "tests", "engines"]

#: Python -> the torch its cells run (a cell may name another).  2.0.1: the oldest
#: torch pyproject allows (pyro-ppl 1.9 needs 2.0); 2.5.1: the last before torch.load defaulted to
#: weights_only=True; 2.13.0: a local CPU wheel on 3.11; 2.15.0: the newest, and the first
#: with wheels for 3.15.
TORCH = {
    "3.10": "2.0.1",
    "3.11": "2.13.0",
    "3.12": "2.5.1",
    "3.13": "2.15.0",
    "3.14": "2.15.0",
    "3.15": "2.15.0",
}
#: What a torch needs beside it: torch 2.0 was built against NumPy 1.
TORCH_EXTRAS = {"2.0.1": ["numpy<2"]}
#: Disk a torch environment takes while it is built: the CUDA builds are 4.3-5.3 GB
#: installed plus their wheels while pip unpacks them; 2.13.0 is the local CPU wheel.
TORCH_BUILD_GB = {"2.0.1": 8, "2.5.1": 9, "2.13.0": 2, "2.15.0": 9}
WRAPT = {"1.17": "wrapt>=1.17,<1.18", "2": "wrapt>=2,<3"}
#: Every Python we support; pyproject's requires-python and classifiers must agree.
#: Where neither PATH nor pyenv has one, dev.py makes it (``interpreters_on_path``).
PYTHONS = ["3.10", "3.11", "3.12", "3.13", "3.14", "3.15"]
#: (Python, pyro-ppl, wrapt, torch).  The first cell of each Python and torch also
#: runs the tests marked slow (subprocess checks that do not depend on the pyro-ppl
#: release), so each runs once per Python and torch; those also marked once (the
#: README's blocks, the command line, start-up in real venvs) run in the first
#: cell only, and those marked programs (real Pyro programs, trained while saved)
#: in the first and the last.  Every Python, torch, pyro-ppl and wrapt is in some
#: cell, each cell for a reason (below); not every combination: CI's run stays
#: within its time (CONTRIBUTING).
CELLS = [
    # Every bug (pyro-ppl 1.9.1, the release most users are pinned to), on the local
    # CPU wheel: the whole mutation check.
    ("3.11", "1.9.1", "2", "2.13.0"),
    # torch 2.0 on Python 3.11+: torch.nn.Module has no __getstate__ of its own
    # there, so a module's state is its live __dict__ (object.__getstate__).
    ("3.11", "1.9.1", "2", "2.0.1"),
    # pyro-ppl 1.9.0 (the same patches as 1.9.1) with the torch it came out with,
    # and the oldest wrapt we allow, on the oldest torch and Python.
    ("3.10", "1.9.0", "1.17", "2.0.1"),
    # The oldest pyro-ppl (GuideMessenger's bug, on Python 3.11+: its mutant), on
    # the last torch before weights-only loads became the default.
    ("3.12", "1.8.6", "2", "2.5.1"),
    # pyro-ppl 1.9.2 (Group fixed upstream, loads trusting the file) on the newest
    # torch: what `pip install pyro-ppl torch` gives.
    ("3.13", "1.9.2", "2", "2.15.0"),
    ("3.14", "1.9.1", "2", "2.15.0"),
    # The newest of everything, and the real programs.
    ("3.15", "1.9.2", "2", "2.15.0"),
]
#: The cells that run the mutation check (tests/test_mutants.py), each with the
#: pytest ``-k`` of the mutants it runs ("" for all). With the engines session's Dask
#: mutant they kill every mutant: the first cell has every bug but GuideMessenger's,
#: pyro-ppl 1.8.6 on 3.12 has that one. Elsewhere the check would repeat the same
#: verdicts at minutes a cell; tools/mutants.py fails the matrix if a mutant is
#: killed in no cell, so a -k that goes stale cannot pass unnoticed.
MUTANT_CELLS = {CELLS[0]: "", ("3.12", "1.8.6", "2", "2.5.1"): "GuideMessenger"}
#: (Python, pyro-ppl): real Ray and Dask clusters where pyro has every bug.
ENGINE_CELLS = [("3.11", "1.9.1")]
ENGINES = ["ray==2.60.0", "dask[distributed]==2026.8.0"]
RESULTS = os.path.join(".nox", "results")
DIST = os.path.join(".nox", "dist")


# pyro.get_param_store().save() then load(), for the compatibility table.
PARAM_STORE_LOAD = """
import json, os, tempfile, torch, pyro, pyro_pickle_fix
pyro.param("p", torch.ones(2), constraint=torch.distributions.constraints.positive)
path = os.path.join(tempfile.mkdtemp(), "p.pt")
pyro.get_param_store().save(path)
pyro.clear_param_store()
rows = {row.target: row for row in pyro_pickle_fix.status().targets}
safe = rows["pyro.params.param_store.ParamStoreDict.load"].wrapped
try:
    pyro.get_param_store().load(path)
    # The fix's own unpickler: torch's advisories against its weights-only
    # unpickler do not apply to it.
    said = "loads, checked by the fix's own unpickler" if safe else "loads, trusting the file"
except Exception as error:
    said = "fails: " + type(error).__name__
print(json.dumps(said))
"""


def _cell_id(python: str, pyro: str, wrapt: str, torch: str) -> str:
    # A cell on its Python's own torch is named without it.
    suffix = "" if TORCH[python] == torch else f"-torch{torch}"
    return f"py{python}-pyro{pyro}-wrapt{wrapt}{suffix}"


#: Cells that run the fast tests only, though each is the first of its Python and
#: torch: on torch 2.15.0 the slow tests run on the newest Python (the last cell),
#: and 3.13 and 3.14 would repeat them at about a minute a cell (CI's time:
#: CONTRIBUTING).  The startup session still runs tests/test_stdlib.py on both.
FAST_ONLY = [("3.13", "1.9.2", "2", "2.15.0"), ("3.14", "1.9.1", "2", "2.15.0")]


def _marks(cell: tuple[str, str, str, str]) -> str:
    """The tests a cell runs: all in the first; in the first cell of each other
    Python and torch (but those of :data:`FAST_ONLY`) the slow ones except those
    marked ``once`` (and ``programs``, but in the last cell); else the fast ones.

    In CI the first cell leaves out the fast ones: ``python3 dev.py test`` has just
    run them on the same Python, torch and pyro-ppl (in ``.venv``).
    """
    if cell == CELLS[0]:
        return "slow or mutants" if os.environ.get("CI") == "true" else ""
    first = next(c for c in CELLS if (c[0], c[3]) == (cell[0], cell[3])) == cell
    if first and cell not in FAST_ONLY:
        return "not once" if cell == CELLS[-1] else "not once and not programs"
    return "not slow"


def _site_packages(session: nox.Session, python: str = "python") -> str:
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    out = session.run(python, "-c", code, silent=True, external=python != "python")
    return str(out).strip().splitlines()[-1]


def _check_disk(session: nox.Session, version: str) -> None:
    free_gb = shutil.disk_usage(".nox").free / 2**30
    needed_gb = TORCH_BUILD_GB.get(version, max(TORCH_BUILD_GB.values()))
    if free_gb < needed_gb:
        session.error(
            f"building torch {version} takes about {needed_gb} GB of disk and "
            f"{os.path.abspath('.nox')} has {free_gb:.1f} GB free: free some space "
            "(old .nox environments, pip's cache) and run the matrix again"
        )


def share_torch(session: nox.Session, version: str | None = None) -> None:
    """Give the session's venv a torch (by default its Python's, :data:`TORCH`)
    from a per-Python environment, made once (a CUDA build of 3-5 GB on Pythons
    without a local CPU wheel).

    ``python3 dev.py matrix`` builds these in a second nox process (the ``torch``
    session) while the first runs cells; a lock makes exactly one process build
    each, and the others wait for it.
    """
    version = version or TORCH[str(session.python)]
    wanted = [f"torch=={version}", *TORCH_EXTRAS.get(version, [])]
    base = os.path.abspath(os.path.join(".nox", f"torch-{version}-py{session.python}"))
    base_python = os.path.join(base, "bin", "python")
    done = os.path.join(base, ".torch-installed")
    # An flock, which the kernel drops when its holder exits, however it exits: an
    # interrupted build leaves no stale lock behind.
    with open(base + ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            session.log(f"waiting for {base}, which another nox process is building")
            fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.exists(done):
            _check_disk(session, version)
            session.run("python", "-m", "venv", "--clear", base)  # the session's Python
            # The machine's pip configuration caps torch below the newest release.  No
            # pip cache: it would keep a second copy of every CUDA wheel (~3 GB each).
            env = {"PIP_CONSTRAINT": os.devnull, "PIP_NO_CACHE_DIR": "1"}
            session.run(base_python, "-m", "pip", "install", "-q", *wanted, external=True, env=env)
            open(done, "w").close()
    site = _site_packages(session, base_python)
    with open(os.path.join(_site_packages(session), "_shared_torch.pth"), "w") as file:
        file.write(site + "\n")
    # pip must keep this torch (the machine's own constraint would swap 2.15 for 2.14.1).
    constraints = os.path.join(base, "constraints.txt")
    with open(constraints, "w") as file:
        file.write("\n".join(wanted) + "\n")
    session.env["PIP_CONSTRAINT"] = constraints


#: (Python, torch) in the order the cells need them, so the first cell waits for
#: one download only.
TORCHES = list(dict.fromkeys((cell[0], cell[3]) for cell in CELLS))


@nox.session
@nox.parametrize("python,version", TORCHES, ids=[f"py{p}-torch{t}" for p, t in TORCHES])
def torch(session: nox.Session, version: str) -> None:
    """Build a torch environment ahead of the cells that share it."""
    share_torch(session, version)


def wheel() -> str:
    """The wheel ``release`` built."""
    found = sorted(glob.glob(os.path.join(DIST, "pyro_pickle_fix-*.whl")))
    if not found:
        raise RuntimeError(f"no wheel in {DIST}: run the release session first")
    return os.path.abspath(found[-1])


@nox.session(python="3.11")
def release(session: nox.Session) -> None:
    """Build the sdist and the wheel, check them, install the wheel into a clean
    venv and run ``check`` from it (the cells then test that same wheel)."""
    session.install("build", "twine")
    for old in glob.glob(os.path.join(DIST, "*")):
        os.remove(old)
    session.run("python", "-m", "build", "--outdir", DIST, ".")
    session.run("twine", "check", "--strict", *glob.glob(os.path.join(DIST, "*")))
    session.run("python", "tools/check_dist.py", DIST)
    share_torch(session)
    session.install("pyro-ppl==1.9.2", wheel())
    session.run("pyro-pickle-fix", "check")
    session.run("python", "-m", "pyro_pickle_fix", "check")


@nox.session
@nox.parametrize("python", PYTHONS)
def startup(session: nox.Session) -> None:
    """The parts that need no torch (trigger, installer, start-up activation),
    with a stand-in pyro package, on every Python."""
    session.install("--no-deps", wheel())
    session.install(WRAPT["2"], "pytest>=7")
    # pytest imports the package to resolve its warning filter; without pyro that
    # import would warn.  Each test sets PYRO_PICKLE_FIX itself for its interpreters.
    session.run(
        "pytest",
        "-p",
        "no:cacheprovider",
        "tests/test_stdlib.py",
        *session.posargs,
        env={"PYRO_PICKLE_FIX": "0"},
    )


@nox.session
@nox.parametrize("python,pyro,wrapt,torch", CELLS, ids=[_cell_id(*cell) for cell in CELLS])
def tests(session: nox.Session, pyro: str, wrapt: str, torch: str) -> None:
    """The suite against one Python x pyro-ppl x wrapt x torch, with the wheel
    installed; then ``check --json`` for the compatibility table."""
    share_torch(session, torch)
    session.install(f"pyro-ppl=={pyro}", WRAPT[wrapt], f"{wheel()}[test]")
    cell = _cell_id(str(session.python), pyro, wrapt, torch)
    os.makedirs(RESULTS, exist_ok=True)
    result = os.path.join(RESULTS, cell)
    marks = _marks((str(session.python), pyro, wrapt, torch))
    marker = ["-m", marks] if marks else []
    mutants = MUTANT_CELLS.get((str(session.python), pyro, wrapt, torch))
    if mutants is None:
        marker.append("--ignore=tests/test_mutants.py")
    elif mutants:  # the other mutants are killed in the first cell
        marker += ["-k", f"not test_mutant_is_killed or {mutants}"]
    session.run(
        "pytest",
        "-n",
        "2",
        *marker,
        f"--junitxml={result}.xml",
        *session.posargs,
        env={"PYRO_PICKLE_FIX_TEST_INSTALLED": "1"},
    )
    outcome = session.run(
        "python", "-m", "pyro_pickle_fix", "check", "--json", silent=True, success_codes=[0, 1]
    )
    found = json.loads(str(outcome).strip().splitlines()[-1])
    for side, fix in (("param_store_stock", "0"), ("param_store_fixed", "1")):
        said = session.run(
            "python", "-c", PARAM_STORE_LOAD, silent=True, env={"PYRO_PICKLE_FIX": fix}
        )
        found[side] = json.loads(str(said).strip().splitlines()[-1])
    with open(f"{result}.json", "w") as file:
        json.dump(found, file)


@nox.session
@nox.parametrize("python,pyro", ENGINE_CELLS, ids=[f"py{p}-pyro{v}" for p, v in ENGINE_CELLS])
def engines(session: nox.Session, pyro: str) -> None:
    """Real Ray and Dask clusters shipping guides (multiprocessing pools run in every cell)."""
    share_torch(session)
    session.install(f"pyro-ppl=={pyro}", WRAPT["2"], f"{wheel()}[test]", *ENGINES)
    session.run(
        "pytest",
        "-p",
        "no:cacheprovider",
        "tests/test_engines.py",
        *session.posargs,
        env={"PYRO_PICKLE_FIX_TEST_ENGINES": "1"},
    )
    # The Dask repair's mutant: no other session installs distributed.  Its report
    # joins the cells' for tools/mutants.py (every mutant killed in some cell).
    os.makedirs(RESULTS, exist_ok=True)
    report = os.path.join(RESULTS, f"engines-py{session.python}-pyro{pyro}.xml")
    session.run(
        "pytest",
        "-p",
        "no:cacheprovider",
        "tests/test_mutants.py",
        "-k",
        "dask_serialize",
        f"--junitxml={report}",
        env={"PYRO_PICKLE_FIX_TEST_ENGINES": "1"},
    )
