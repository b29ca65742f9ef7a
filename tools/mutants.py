"""The mutation check: every entry of the patch table, and every repair it declares,
must be needed by at least one fast test.

    python tools/mutants.py [--only TARGET] [--python PATH] [--list]

The mutants come from the table itself (``pyro_pickle_fix._targets.PATCHES``), read
at run time, so a new entry or repair is covered without touching this file:

- one mutant per entry that removes it from ``PATCHES`` (the entry
  ``torch._utils:_get_obj_state`` is the tensor-state hook);
- one per repair in :data:`REPAIRS` that is set on the entry, which empties it
  (``{}``, ``()``, ``False``).  An attribute the table does not have is skipped.

Removing an entry takes it out of ``PATCHES`` only: an index built from the table
at import (``BY_TARGET``) keeps it, so an entry that names it still loads, and the
mutant is killed by behaviour, not by a ``KeyError``.

Each mutant runs in a scratch copy of the checkout: the mutation is a few lines
appended to the copy's ``_targets.py``.  The tests run in a venv made from the
interpreter under test (``.venv``'s, or ``--python``), which sees everything that
one has installed, with the copy ahead of it through a ``.pth`` file: in the tests
and in every interpreter they start, but not in the environments that tests build
to stand for a user without the package.  Each interpreter is first checked to
import the copy's table, and the unmutated copy must pass the tests that judge a
mutant (the baseline: the whole fast suite, once).  Then each mutant runs its
hinted tests (:data:`HINTS`), and the whole fast suite if they pass, as
``pytest -x -q -p no:cacheprovider -m "not slow" -n 2`` (``-n 0`` for the hinted
tests).

A mutant is ``killed`` when a test fails: pytest exits 1, or 2 where xdist ends
the session on that failure (``-x``), but not where a file fails to collect.  It
``SURVIVED`` when every test passed, and is an ``error`` otherwise (pytest exits
2-5, a timeout, a mutation that does not apply, a baseline that fails).

A mutant declared in :data:`UNTESTABLE` runs its hinted tests here; if it survives
them, it runs in the venv of the nox cell named there (under ``.nox``, which
``python3 dev.py matrix`` makes), and counts as killed only if it is killed there.

Prints one line per mutant and ``mutants: K killed of N (P%)``; exits 1 below 100%.
Standard library only: it runs the tests with another interpreter, never imports
the package itself.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PYTHON = ROOT / ".venv" / "bin" / "python"
TABLE = Path("pyro_pickle_fix") / "_targets.py"

#: The repairs a Patch can declare, as attribute names.  Each one that is truthy on an
#: entry gets a mutant that empties it; one the table lacks is skipped.
REPAIRS = ("hide", "snapshot", "alive", "leaf_tensors", "added", "requires")

#: The fast tests, as each mutant runs them: stop at the first failure.
PYTEST = ["-x", "-q", "-p", "no:cacheprovider", "-m", "not slow", "-n", "2"]

#: target (or (target, repair)) -> the tests most likely to kill its mutants, run
#: first; the whole fast suite runs when they pass.  A file or test that is gone is
#: left out, so a stale hint costs time, not a wrong verdict.
HINTS: dict[str | tuple[str, str], tuple[str, ...]] = {
    "pyro.contrib.easyguide.easyguide:Group.__getstate__": (
        "tests/test_easyguide.py",
        "tests/test_faults.py",
    ),
    ("pyro.contrib.easyguide.easyguide:Group.__getstate__", "alive"): (
        "tests/test_faults.py::test_a_group_whose_guide_is_gone_fails_at_save_time_with_a_clear_error",
    ),
    "pyro.nn.module:PyroModule.__getstate__": ("tests/test_guides.py",),
    ("pyro.nn.module:PyroModule.__getstate__", "snapshot"): (
        "tests/test_faults.py::test_save_writes_the_plate_cache_as_it_was_when_a_training_step_ends_midway",
        "tests/test_faults.py",
    ),
    ("pyro.nn.module:PyroModule.__getstate__", "requires"): (
        "tests/test_adversarial.py::test_without_the_tensor_state_hook_its_partners_stay_stock",
    ),
    "pyro.nn.module:PyroModule.__copy__": (
        "tests/test_fidelity.py::test_copy_copy_shares_what_stock_shares",
        "tests/test_fidelity.py",
    ),
    ("pyro.nn.module:PyroModule.__copy__", "added"): (
        "tests/test_api.py::test_activation_gives_no_warning",
        "tests/test_fidelity.py::test_copy_copy_shares_what_stock_shares",
    ),
    "pyro.infer.autoguide.guides:AutoGuide.__getstate__": ("tests/test_guides.py",),
    "pyro.infer.autoguide.guides:AutoGuide.__setstate__": ("tests/test_guides.py",),
    "pyro.contrib.easyguide.easyguide:EasyGuide.__setstate__": (
        "tests/test_guides.py::test_copy_copy_of_an_easy_guide_gets_groups_bound_to_the_copy",
        "tests/test_guides.py",
    ),
    ("pyro.contrib.easyguide.easyguide:EasyGuide.__setstate__", "added"): (
        "tests/test_api.py::test_activation_gives_no_warning",
        "tests/test_guides.py",
    ),
    "pyro.params.param_store:ParamStoreDict.get_state": (
        "tests/test_guides.py::test_param_store_state_leaves_live_parameters_alone",
        "tests/test_roundtrip.py",
    ),
    ("pyro.params.param_store:ParamStoreDict.get_state", "requires"): (
        "tests/test_adversarial.py::test_without_the_tensor_state_hook_its_partners_stay_stock",
    ),
    "pyro.params.param_store:ParamStoreDict.load": ("tests/test_roundtrip.py",),
    "pyro.optim.optim:PyroOptim.load": ("tests/test_loading.py",),
    "pyro.poutine.guide:GuideMessenger.__getstate__": (
        "tests/test_guides.py::test_guide_messenger_getstate_keeps_the_live_trace",
    ),
    "torch.distributions.transforms:Transform.__getstate__": ("tests/test_guides.py",),
    ("torch.distributions.transforms:Transform.__getstate__", "leaf_tensors"): (
        "tests/test_guides.py",
        "tests/test_adversarial.py::test_leaf_tensors_keep_the_alias_between_two_transforms",
    ),
    "torch._utils:_get_obj_state": (
        "tests/test_guides.py::test_torch_save_of_a_module_with_a_held_parameter_keeps_it_usable",
        "tests/test_adversarial.py::test_without_the_tensor_state_hook_its_partners_stay_stock",
        "tests/test_roundtrip.py",
    ),
    "torch._tensor:Tensor.__copy__": (
        "tests/test_fidelity.py::test_copy_copy_of_a_parameter_keeps_pyros_weakref_as_stock_does",
        "tests/test_adversarial.py",
    ),
    "distributed.protocol.serialize:dask_serialize": ("tests/test_engines.py",),
}

#: (target, repair or None for the entry) -> (why no test in .venv can kill it, the
#: nox session whose cell tests it).  Such a mutant runs its hinted tests in .venv;
#: if it survives them, it runs in that cell's venv, and counts as killed only if it
#: is killed there.
UNTESTABLE: dict[tuple[str, str | None], tuple[str, str]] = {
    ("pyro.poutine.guide:GuideMessenger.__getstate__", None): (
        "the bug exists only on pyro-ppl 1.8.6 with Python >= 3.11",
        "tests(py3.11-pyro1.8.6-wrapt2)",
    ),
    ("distributed.protocol.serialize:dask_serialize", None): (
        "needs Dask (distributed), which only the engines cells install",
        "engines(py3.11-pyro1.9.1)",
    ),
}

# Run in the interpreter under test, with the scratch copy on its path: where the
# package is imported from, and the table's entries with the repairs they set.
DESCRIBE = """
import json, sys
import pyro_pickle_fix
from pyro_pickle_fix import _targets
for module in ("pytest", "xdist"):
    __import__(module)
entries = []
for index, entry in enumerate(_targets.PATCHES):
    repairs = [name for name in json.loads(sys.argv[1]) if getattr(entry, name, None)]
    entries.append({"index": index, "target": entry.target, "repairs": repairs})
print(json.dumps({
    "package": pyro_pickle_fix.__file__,
    "table": _targets.__file__,
    "python": sys.version.split()[0],
    "entries": entries,
}))
"""

# The same, for one mutant: the table as imported, to check the mutation applied.
VERIFY = """
import json, sys
from pyro_pickle_fix import _targets
index, target, repair = json.loads(sys.argv[1])
targets = [entry.target for entry in _targets.PATCHES]
value = None if repair is None else getattr(_targets.PATCHES[index], repair)
print(json.dumps({"table": _targets.__file__, "targets": targets, "empty": not value}))
"""


@dataclass
class Mutant:
    index: int  # in PATCHES
    target: str
    repair: str | None  # None: the entry is removed

    @property
    def label(self) -> str:
        hook = "  (the hook)" if self.target == "torch._utils:_get_obj_state" else ""
        return self.target + (f" [{self.repair}]" if self.repair else hook)

    def suffix(self) -> str:
        """Python appended to the scratch copy of _targets.py to apply the mutation."""
        head = (
            f"\n\n# --- mutant (tools/mutants.py): {self.label} ---\n"
            f"assert PATCHES[{self.index}].target == {self.target!r}, PATCHES[{self.index}]\n"
        )
        if self.repair is None:
            return head + (
                "PATCHES = type(PATCHES)(\n"
                f"    _entry for _index, _entry in enumerate(PATCHES) if _index != {self.index}\n"
                ")\n"
            )
        return head + (
            f"_mutant = PATCHES[{self.index}]\n"
            f"setattr(_mutant, {self.repair!r}, type(getattr(_mutant, {self.repair!r}))())\n"
            "del _mutant\n"
        )


@dataclass
class Outcome:
    verdict: str  # "killed", "SURVIVED", "error"
    by: str = ""  # the first failing test, or why it is an error
    seconds: float = 0.0


# The site-packages directories of an interpreter.
SITES = """
import json, sysconfig
print(json.dumps(sorted({sysconfig.get_paths()[key] for key in ("purelib", "platlib")})))
"""
PURELIB = "import sysconfig; print(sysconfig.get_paths()['purelib'])"


class Interpreter:
    """The tests' Python: a venv made from ``source`` that sees everything ``source``
    has installed, with the scratch copy of the package ahead of it.

    Not ``PYTHONPATH``: it would reach the environments that tests build to show
    what a user without the package gets (``scratch_env.bare_env``), and a ``.pth``
    file is what those leave out, as they leave out an installed package.
    """

    def __init__(
        self, source: Path, scratch: Path, where: Path, timeout: float, baseline: bool
    ) -> None:
        self.source = source
        self.scratch = scratch
        self.elsewhere = where / "elsewhere"  # an empty working directory
        self.timeout = timeout
        self.want_baseline = baseline
        #: selection -> "" if the unmutated copy passes it, else why not; () is the
        #: whole fast suite, which stands for every selection once it passes.
        self.baselines: dict[tuple[str, ...], str] = {}
        #: Why this interpreter cannot run the tests, if it cannot.
        self.unusable = ""
        # PYTHONPATH would come before the copy (a checkout on it would be tested).
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("PYRO_PICKLE_FIX") and k != "PYTHONPATH"
        }
        self.python = where / "venv" / "bin" / "python"

    def setup(self) -> dict:
        """Make the venv; the table it imports (see :meth:`describe`)."""
        self.elsewhere.mkdir(parents=True)
        sites = json.loads(self._output([str(self.source), "-c", SITES]))
        self._output([str(self.source), "-m", "venv", "--without-pip", str(self.python.parents[1])])
        own = Path(self._output([str(self.python), "-c", PURELIB]))
        (own / "_mutants_scratch.pth").write_text(
            "".join(
                [f"{self.scratch}\n", *(f"import site; site.addsitedir({s!r})\n" for s in sites)]
            )
        )
        return self.describe()

    def _output(self, command: list[str]) -> str:
        done = subprocess.run(
            command,
            cwd=self.elsewhere,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if done.returncode:
            raise RuntimeError(
                f"{' '.join(command)[:200]}: {done.stderr.strip()[-2000:] or done.returncode}"
            )
        return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""

    def script(self, code: str, argument: object) -> dict:
        """Run one of the scripts above; its JSON, or RuntimeError with its stderr."""
        done = subprocess.run(
            [str(self.python), "-c", code, json.dumps(argument)],
            # Not in the copy: `python -c` puts its working directory first on
            # sys.path, and the interpreters that tests start must find the copy
            # without it.
            cwd=self.elsewhere,
            env={**self.env, "PYRO_PICKLE_FIX": "0"},  # the table only: patch nothing
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if done.returncode:
            raise RuntimeError(done.stderr.strip()[-2000:] or f"exit {done.returncode}")
        return json.loads(done.stdout.strip().splitlines()[-1])

    def describe(self) -> dict:
        """The table this interpreter imports, after checking it is the scratch copy's."""
        found = self.script(DESCRIBE, list(REPAIRS))
        for key in ("package", "table"):
            if not Path(found[key]).resolve().is_relative_to(self.scratch.resolve()):
                raise RuntimeError(
                    f"{self.python} imports {found[key]}, not the scratch copy under "
                    f"{self.scratch}: the installed package takes precedence over it, "
                    "and every mutant would be tested unmutated"
                )
        return found

    def pytest(self, selection: list[str], *, stop: bool = True) -> tuple[int | None, str]:
        """(pytest's exit code or None on timeout, its output)."""
        options = PYTEST if stop else [o for o in PYTEST if o != "-x"]
        if selection:
            # A few hinted tests: one process (xdist's workers would each import
            # torch and pyro again, for tests that take seconds).
            options = [*options[: options.index("-n")], "-n", "0"]
        command = [str(self.python), "-m", "pytest", *options, *selection]
        process = subprocess.Popen(
            command,
            cwd=self.scratch,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group: a timeout ends all of it
        )
        try:
            output, _ = process.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            output, _ = process.communicate()
            return None, output
        except BaseException:
            _kill_group(process)
            raise
        return process.returncode, output


def _kill_group(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def _failures(output: str) -> list[str]:
    """The tests (or, for a collection error, the files) of pytest's short summary."""
    found = re.finditer(r"^(FAILED|ERROR) (.+?)(?: - .*)?$", output, re.M)
    return [m.group(2) for m in found]


def tests_failed(code: int | None, output: str) -> bool:
    """Whether a test failed: pytest exits 1.  With ``-n 2 -x``, xdist ends the
    session on the first failure as an interruption, exit 2; that counts when what
    failed is a test (``FAILED``/``ERROR path::test``), not a file that does not
    collect, which is an error, as it is without xdist."""
    if code == 1:
        return True
    failed = _failures(output)
    return (
        code == 2
        and "xdist.dsession.Interrupted: stopping after" in output
        and bool(failed)
        and all("::" in node for node in failed)
    )


def _why(output: str) -> str:
    """pytest's own words for an error: its last ``E`` line (or last line), short."""
    said = [line[1:].strip() for line in output.splitlines() if line.startswith("E ")]
    last = said[-1] if said else (output.strip().splitlines() or [""])[-1]
    return last if len(last) <= 240 else last[:237] + "..."


def _tail(output: str, lines: int = 25) -> str:
    return "\n".join("    | " + line for line in output.rstrip().splitlines()[-lines:])


def nox_venv(nox_dir: Path, session: str) -> Path:
    """The venv nox makes for a session signature such as
    ``tests(py3.11-pyro1.8.6-wrapt2)`` (nox's own ``_normalize_path``)."""
    envdir = str(nox_dir.resolve())
    name = re.sub(r"[^\w\s-]", "-", session).strip().lower()
    name = re.sub(r"[-\s]+", "-", name).strip("-")
    full = os.path.join(envdir, name)
    if len(full) > 100 - len("bin/pythonX.Y") and len(envdir) < 100 - 9:
        full = os.path.join(envdir, hashlib.sha1(name.encode("ascii")).hexdigest()[:8])
    return Path(full)


def hinted(mutant: Mutant, scratch: Path) -> list[str]:
    """The hinted tests that still exist in the scratch copy."""
    hints = HINTS.get((mutant.target, mutant.repair or ""), ()) or HINTS.get(mutant.target, ())
    found = []
    for hint in hints:
        path, _, test = hint.partition("::")
        source = scratch / path
        if source.is_file() and (not test or f"def {test.split('[')[0]}(" in source.read_text()):
            found.append(hint)
    return found


def copy_checkout(scratch: Path) -> None:
    """The checkout as the tests read it (the package, tests, pyproject.toml with
    pytest's configuration, and the noxfile, README and tools that some tests
    read), without the venvs, caches and VCS data."""
    shutil.copytree(
        ROOT,
        scratch,
        ignore=shutil.ignore_patterns(
            ".*", "build", "dist", "*.egg-info", "__pycache__", "*.pyc", "node_modules"
        ),
        dirs_exist_ok=True,
    )


def write_table(scratch: Path, original: str, mutant: Mutant | None) -> None:
    (scratch / TABLE).write_text(original + (mutant.suffix() if mutant else ""))
    for cache in (scratch / "pyro_pickle_fix").rglob("__pycache__"):
        shutil.rmtree(cache, ignore_errors=True)  # never a stale _targets bytecode


def baseline_error(interpreter: Interpreter, selection: list[str]) -> str:
    """Why no mutant can be judged by these tests with this interpreter: the
    unmutated copy fails them ("" when it passes them).  Each selection runs once,
    and none does once the whole fast suite has passed."""
    if interpreter.unusable or not interpreter.want_baseline:
        return interpreter.unusable
    key = tuple(selection)
    if interpreter.baselines.get(()) == "" or key in interpreter.baselines:
        return interpreter.baselines.get(key, "")
    what = " ".join(selection) or "the fast suite"
    print(f"mutants: baseline: {what} on the unmutated copy, {interpreter.source}", file=sys.stderr)
    start = time.monotonic()
    code, output = interpreter.pytest(selection, stop=False)
    seconds = time.monotonic() - start
    if code == 0 or (selection and code == 5):
        interpreter.baselines[key] = ""
        print(f"mutants: baseline passes ({seconds:.0f} s)", file=sys.stderr)
    else:
        why = "timeout" if code is None else f"pytest exit {code}"
        failed = sorted(set(_failures(output)))
        more = f" and {len(failed) - 1} more" if len(failed) > 1 else ""
        first = f"{failed[0]}{more}" if failed else why
        interpreter.baselines[key] = f"not judged: the unmutated copy fails {first}"
        print(
            f"mutants: baseline FAILS ({why}, {seconds:.0f} s): no mutant is judged by "
            f"{what} with {interpreter.source}\n{_tail(output)}",
            file=sys.stderr,
        )
    return interpreter.baselines[key]


def run_mutant(
    mutant: Mutant,
    interpreter: Interpreter,
    original: str,
    expected: list[str],
    *,
    suite: bool = True,
) -> Outcome:
    """Its hinted tests, then (``suite``) the whole fast suite if they pass."""
    if interpreter.unusable:
        return Outcome("error", interpreter.unusable)
    hints = hinted(mutant, interpreter.scratch)
    selections = [hints] if hints else []
    if suite or not hints:
        selections.append([])  # the whole fast suite
    start = time.monotonic()
    baselines = 0.0  # seconds of it spent on the unmutated copy

    def done(verdict: str, by: str = "") -> Outcome:
        return Outcome(verdict, by, time.monotonic() - start - baselines)

    write_table(interpreter.scratch, original, mutant)
    try:
        try:
            seen = interpreter.script(VERIFY, [mutant.index, mutant.target, mutant.repair])
        except (RuntimeError, subprocess.TimeoutExpired) as error:
            return done("error", f"the mutated table does not import: {error}")
        if mutant.repair is None:
            applied = seen["targets"] == [t for i, t in enumerate(expected) if i != mutant.index]
        else:
            applied = seen["targets"] == expected and seen["empty"]
        if not applied:
            return done("error", "the mutation did not apply to the imported table")
        for selection in selections:
            began = time.monotonic()
            write_table(interpreter.scratch, original, None)  # run unmutated if not yet
            unjudged = baseline_error(interpreter, selection)
            write_table(interpreter.scratch, original, mutant)
            baselines += time.monotonic() - began
            if unjudged:
                return done("error", unjudged)
            code, output = interpreter.pytest(selection)
            if tests_failed(code, output):
                return done("killed", "by " + _failures(output)[0])
            if code is None:
                print(_tail(output), file=sys.stderr)
                return done("error", f"timeout after {interpreter.timeout:.0f} s")
            if selection and code in (0, 5):  # the hints passed: the whole fast suite
                continue
            if code != 0:
                print(_tail(output), file=sys.stderr)
                return done("error", f"pytest exit {code}: {_why(output)}")
        return done("SURVIVED", "every fast test passes" if suite else "its hinted tests pass")
    finally:
        write_table(interpreter.scratch, original, None)


def line(verdict: str, mutant: Mutant, detail: str, seconds: float | None) -> str:
    took = f"  ({seconds:.0f} s)" if seconds is not None else ""
    return f"{verdict:<9} {mutant.label}  {detail}{took}".rstrip()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="tools/mutants.py", description=__doc__.split("\n\n")[0].strip()
    )
    parser.add_argument(
        "--python",
        type=Path,
        default=DEFAULT_PYTHON,
        help="the interpreter that runs the tests (default: .venv; e.g. a nox cell's, "
        "such as .nox/tests-py3-11-pyro1-8-6-wrapt2/bin/python)",
    )
    parser.add_argument(
        "--only",
        action="append",
        metavar="TARGET",
        help="run only these mutants: a target (all of its mutants) or a label as "
        "printed, such as 'pyro.nn.module:PyroModule.__getstate__ [hide]' (repeatable)",
    )
    parser.add_argument("--list", action="store_true", help="list the mutants and stop")
    parser.add_argument(
        "--timeout", type=float, default=1200, help="seconds per pytest run (default 1200)"
    )
    parser.add_argument(
        "--no-baseline",
        action="store_true",
        help="skip the unmutated run (local iteration only: a red suite then kills everything)",
    )
    parser.add_argument(
        "--nox-dir",
        type=Path,
        default=ROOT / ".nox",
        help="where nox keeps the cells' venvs (default: .nox)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=2,
        help="mutants judged at a time, each in a scratch copy of its own (default 2)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch copies")
    args = parser.parse_args(argv)
    python = args.python.absolute()
    if not python.exists():
        parser.error(f"no interpreter at {python}")

    began = time.monotonic()
    base = Path(tempfile.mkdtemp(prefix="pyro-pickle-fix-mutants-"))
    jobs = max(1, args.jobs)
    # One scratch copy per worker: a mutant's table is written into its copy.
    scratches = [base / f"checkout-{worker}" for worker in range(jobs)]
    interpreters: dict[tuple[Path, int], Interpreter] = {}
    made_lock = threading.Lock()  # the interpreters
    queue_lock = threading.Lock()  # the mutants left, the verdicts and the output

    def interpreter(source: Path, worker: int = 0) -> Interpreter:
        """The tests' Python made from ``source`` for a worker (once), checked to
        import that worker's copy."""
        with made_lock:
            if (source, worker) not in interpreters:
                where = base / f"python-{len(interpreters)}"
                made = Interpreter(
                    source, scratches[worker], where, args.timeout, not args.no_baseline
                )
                first = interpreters.get((source, 0))
                if first is not None:
                    made.baselines = first.baselines  # copies of one checkout: judged once
                try:
                    made.setup()
                except (RuntimeError, OSError, subprocess.SubprocessError) as error:
                    made.unusable = f"cannot use {source}: {error}"
                interpreters[(source, worker)] = made
            return interpreters[(source, worker)]

    try:
        for scratch in scratches:
            copy_checkout(scratch)
        original = (scratches[0] / TABLE).read_text()  # one snapshot, however ROOT changes
        here = interpreter(python)
        if here.unusable:
            print(f"mutants: {here.unusable}", file=sys.stderr)
            return 2
        table = here.describe()
        expected = [entry["target"] for entry in table["entries"]]
        mutants = [
            Mutant(entry["index"], entry["target"], repair)
            for entry in table["entries"]
            for repair in (None, *entry["repairs"])
        ]
        if args.only:
            unknown = [o for o in args.only if not any(o in (m.target, m.label) for m in mutants)]
            if unknown:
                listing = "\n".join("  " + m.label for m in mutants)
                parser.error(f"no mutant matches {unknown}; the mutants are:\n{listing}")
            mutants = [m for m in mutants if m.target in args.only or m.label in args.only]
        if args.list:
            print("\n".join(m.label for m in mutants))
            return 0
        print(
            f"mutants: {len(mutants)} from the {len(expected)} entries of {table['table']} "
            f"(Python {table['python']}: {python}, imported from the copy; {jobs} at a time)",
            file=sys.stderr,
        )
        if not args.only:
            baseline_error(here, [])  # the fast suite, which covers every hint
        waiting = list(reversed(mutants))
        verdicts: list[str] = []

        def work(worker: int) -> None:
            while True:
                with queue_lock:
                    if not waiting:
                        return
                    mutant = waiting.pop()
                outcome = judge(mutant, worker)
                with queue_lock:
                    print(line(outcome.verdict, mutant, outcome.by, outcome.seconds), flush=True)
                    verdicts.append(outcome.verdict)

        def judge(mutant: Mutant, worker: int) -> Outcome:
            mine = interpreter(python, worker)
            declared = UNTESTABLE.get((mutant.target, mutant.repair))
            # A declared survivor runs its hinted tests here (a stale declaration shows
            # there) and the whole fast suite in its cell, if it survives them.
            outcome = run_mutant(mutant, mine, original, expected, suite=not declared)
            if declared and outcome.verdict == "killed":
                outcome.by += "  (declared untestable here: take it out of UNTESTABLE)"
            elif declared and outcome.verdict == "SURVIVED":
                reason, cell = declared
                cell_python = nox_venv(args.nox_dir, cell) / "bin" / "python"
                here_too = outcome.seconds
                if cell_python.resolve() == python.resolve():
                    outcome.by = f"in {cell}, which this is ({reason})"
                elif not cell_python.exists():
                    outcome.by = (
                        f"untestable here, tested in {cell} ({reason}); not run: no "
                        f"{cell_python} (python3 dev.py matrix makes it)"
                    )
                else:
                    there = interpreter(cell_python, worker)
                    outcome = run_mutant(mutant, there, original, expected)
                    outcome.by = f"untestable here, tested in {cell}: {outcome.by}"
                    outcome.seconds += here_too
            return outcome

        workers = [threading.Thread(target=work, args=(w,)) for w in range(jobs)]
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join()
        killed = verdicts.count("killed")
        total = len(mutants)
        score = 100.0 * killed / total if total else 100.0
        print(f"mutants: {killed} killed of {total} ({score:.0f}%)", flush=True)
        print(f"mutants: {time.monotonic() - began:.0f} s in all", file=sys.stderr)
        return 0 if killed == total else 1
    finally:
        if args.keep:
            print(f"mutants: scratch copies kept under {base}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
