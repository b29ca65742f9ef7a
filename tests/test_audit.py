"""``audit``: every serialization path on the user's own object, with and without
the fix (issue: audit your own guide)."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
import traceback
from pathlib import Path

import pytest
from guides import KINDS, build, train
from support import GROUP_BUG, run_json

from pyro_pickle_fix import AuditReport, audit
from pyro_pickle_fix.diagnostics.audit import PATHS, error_line

TESTS = Path(__file__).parent


def factory(kind):
    def make():
        model_fn, guide, kwargs = build(kind)
        if kind == "PyroModule":
            return guide, lambda module: module()
        return guide, lambda g: train(model_fn, g, kwargs, 1)

    make.__qualname__ = kind
    return make


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_with_the_fix_every_path_of_every_kind_is_clean(kind):
    report = audit(factory(kind))
    assert report.fix_active is True
    assert [row.path for row in report.rows] == list(PATHS)
    for row in report.rows:
        assert row.changes == [], (row.path, row.changes)
        assert row.saved is None and row.live_error is None, row.as_dict()
        assert row.copy_error == ("not run" if row.path == "param-store" else None), row.path
    assert report.clean
    assert "every path left the live object unchanged and working" in str(report)


STOCK_AUDIT = """
import json, sys
sys.path.insert(0, {tests!r})
from test_audit import factory
from pyro_pickle_fix import audit
print(json.dumps(audit(factory({kind!r}), paths={paths!r}).as_dict()))
"""


def stock_audit(kind, paths):
    return AuditReport.from_dict(
        run_json(STOCK_AUDIT.format(tests=str(TESTS), kind=kind, paths=paths), fix=False)
    )


def test_without_the_fix_an_auto_guide_list_shows_each_change_by_its_path():
    report = stock_audit("AutoGuideList", ["pickle5", "torch.save", "param-store"])
    assert report.fix_active is False and not report.clean
    rows = {row.path: row for row in report.rows}
    for path in ("pickle5", "torch.save"):
        changes = rows[path].changes
        assert "guide.__dict__['_model']: tuple -> None" in changes
        assert "guide._modules['0'].__dict__['master']: weakref -> None" in changes
        assert any(
            line.startswith("Parameter '") and line.endswith(".__dict__: lost 'unconstrained'")
            for line in changes
        ), changes
    # get_state() pops pyro's weakref from the parameters it holds
    assert any("lost 'unconstrained'" in line for line in rows["param-store"].changes)


def test_without_the_fix_an_easy_guide_shows_the_group_swap_where_pyro_has_it():
    report = stock_audit("EasyGuide", ["pickle4"])
    (row,) = report.rows
    swap = [line for line in row.changes if "groups[" in line and "['_guide']" in line]
    if GROUP_BUG:
        assert swap == ["guide.groups['local'].__dict__['_guide']: weakref -> Easy"], row.changes
        assert row.live_error is not None  # the guide now calls itself through its group
    else:
        assert swap == [] and row.live_error is None


# A user's module: a guide, a class whose own __getstate__ changes the live object
# (unknown to the fix), and bad inputs.
USER_MODULE = """
import pyro, torch
import pyro.distributions as dist
from pyro.infer import SVI, Trace_ELBO, autoguide
from pyro.nn import PyroModule
from pyro.optim import Adam

def model():
    pyro.sample("x", dist.Normal(0.0, 1.0))

def make_guide():
    pyro.clear_param_store()
    guide = autoguide.AutoNormal(model)
    svi = SVI(model, guide, Adam({"lr": 0.01}), Trace_ELBO())
    svi.step()
    return guide, lambda g: SVI(model, g, Adam({"lr": 0.01}), Trace_ELBO()).step()

class Counter(PyroModule):
    def __init__(self):
        super().__init__()
        self.saves = []
    def __getstate__(self):
        self.__dict__["saves"] = self.saves + ["saved"]  # rebinds a live attribute
        return super().__getstate__()

def make_counter():
    return Counter()

def make_guide_alone():
    return make_guide()[0]  # no call: nothing exercises it

def make_unpicklable():
    guide, call = make_guide()
    guide.note = lambda: "a local lambda: pickle cannot save it"
    return guide, call

def make_plain():
    return {"weights": [1, 2, 3]}

def broken():
    raise ValueError("no data file")

NOT_CALLABLE = 42
"""


@pytest.fixture(scope="module")
def user_path(tmp_path_factory):
    directory = tmp_path_factory.mktemp("user")
    (directory / "user_guides.py").write_text(textwrap.dedent(USER_MODULE))
    return directory


def cli(user_path, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYRO_PICKLE_FIX")}
    env["PYTHONPATH"] = os.pathsep.join([str(user_path), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "pyro_pickle_fix", "audit", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=user_path.parent,
    )


def test_cli_audits_a_module_on_pythonpath_and_json_round_trips(user_path):
    done = cli(user_path, "user_guides:make_guide", "--paths", "pickle5", "copy", "--json")
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    for side in ("without_fix", "with_fix"):
        assert AuditReport.from_dict(found[side]).as_dict() == found[side]
    with_fix = AuditReport.from_dict(found["with_fix"])
    assert [row.path for row in with_fix.rows] == ["pickle5", "copy"]
    assert with_fix.clean and with_fix.fix_active
    without = AuditReport.from_dict(found["without_fix"])
    assert (
        not without.clean and "guide.__dict__['_model']: tuple -> None" in without.rows[0].changes
    )

    text = cli(user_path, "user_guides:make_guide", "--paths", "torch.save")
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0].startswith("pyro-pickle-fix audit: user_guides:make_guide")
    assert "  without the fix" in lines and "  with the fix" in lines
    assert lines[-1].strip().startswith("Serializing user_guides:make_guide is safe here")


def test_a_users_own_mutating_getstate_is_reported_with_the_fix(user_path):
    done = cli(user_path, "user_guides:make_counter", "--paths", "pickle5")
    assert done.returncode == 1, done.stderr
    assert "changed: guide.__dict__['saves']: list -> another list" in done.stdout
    assert "NOT SAFE with the fix on: pickle5" in done.stdout
    assert "your own class" in done.stdout


@pytest.mark.slow  # the command line's work: the same on every Python, torch and pyro-ppl
@pytest.mark.once
@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_such_module:make", "pyro-pickle-fix: error: cannot import 'no_such_module'"),
        ("user_guides", "is not MODULE:CALLABLE"),
        ("user_guides:missing", "module 'user_guides' has no attribute 'missing'"),
        ("user_guides:NOT_CALLABLE", "is a int, not a callable"),
        ("user_guides:broken", "the factory raised ValueError: no data file"),
    ],
)
def test_bad_input_is_one_clear_line_and_exit_2(user_path, spec, message):
    done = cli(user_path, spec, "--paths", "pickle5")
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr


@pytest.mark.slow  # the command line's work: the same on every Python, torch and pyro-ppl
@pytest.mark.once
def test_a_non_pyro_object_is_audited_with_a_note(user_path):
    done = cli(user_path, "user_guides:make_plain", "--paths", "deepcopy")
    assert done.returncode == 0, done.stderr
    assert "note: builtins.dict is not a Pyro object; audited anyway" in done.stdout


@pytest.mark.slow  # the command line's work: the same on every Python, torch and pyro-ppl
@pytest.mark.once
def test_a_path_whose_library_is_missing_is_skipped_not_failed():
    found = run_json(
        "import json, sys\n"
        "sys.modules['cloudpickle'] = None  # as if not installed\n"
        "from pyro_pickle_fix import audit\n"
        "print(json.dumps(audit(lambda: {'a': 1}, paths=['cloudpickle', 'pickle5']).as_dict()))"
    )
    rows = {row["path"]: row for row in found["rows"]}
    assert rows["cloudpickle"]["skipped"] == "cloudpickle is not installed"
    assert rows["pickle5"]["skipped"] is None
    assert found["clean"] is True


@pytest.mark.slow  # the command line's work: the same on every Python, torch and pyro-ppl
@pytest.mark.once
def test_an_unknown_path_is_a_clear_error(user_path):
    done = cli(user_path, "user_guides:make_guide", "--paths", "marshal")
    assert done.returncode == 2
    assert "invalid choice: 'marshal'" in done.stderr


def _a_local_lambda():
    return lambda: "pickle cannot save it"


def test_a_path_that_cannot_save_is_reported_and_leaves_the_object_alone(user_path):
    done = cli(user_path, "user_guides:make_unpicklable", "--paths", "pickle5", "deepcopy")
    assert done.returncode == 0, done.stderr
    # What this Python's pickle raises for a local lambda, up to the object's name, as
    # a traceback words it: "AttributeError: Can't pickle local object" up to 3.12,
    # "Can't get local object" on 3.13, a PicklingError with a note per enclosing
    # object from 3.14.
    with pytest.raises(Exception) as stock:
        pickle.dumps(_a_local_lambda(), 5)
    own = traceback.format_exception_only(stock.type, stock.value)[0]
    expected = own[: own.index("local object") + len("local object")]
    assert f"save: {expected}" in done.stdout, done.stdout
    assert "cannot save it by: pickle5." in done.stdout.splitlines()[-1]


@pytest.mark.slow  # the command line's work: the same on every Python, torch and pyro-ppl
@pytest.mark.once
def test_an_object_without_a_call_is_not_exercised_and_never_said_to_work(user_path):
    done = cli(user_path, "user_guides:make_guide_alone", "--paths", "pickle5")
    assert done.returncode == 0, done.stderr
    with_fix = done.stdout.split("  with the fix\n")[1].splitlines()
    assert with_fix[1].split()[1:] == ["yes", "yes", "not", "exercised", "not", "exercised"]
    verdict = done.stdout.strip().splitlines()[-1]
    assert "whether it still works was not exercised" in verdict
    assert "safe" not in verdict and "works" not in verdict.split(";")[0]
    found = json.loads(cli(user_path, "user_guides:make_guide_alone", "--json").stdout)
    assert found["with_fix"]["exercised"] is False and found["with_fix"]["clean"] is True
    assert "not exercised" in str(AuditReport.from_dict(found["with_fix"]))


@pytest.mark.parametrize("source", ["raise ValueError('bad value\\nsecond line')", "x = ("])
def test_an_error_line_is_the_errors_own_line_without_its_notes(source):
    # pickle adds notes from Python 3.14 on ("when serializing dict item 'note'");
    # a traceback prints them after the error's line, where they are no error line.
    with pytest.raises(Exception) as raised:
        exec(compile(source, "<audit>", "exec"))
    error = raised.value
    own = traceback.format_exception_only(type(error), error)[-1].strip()
    error.__notes__ = ["when serializing dict item 'note'", "when serializing AutoNormal state"]
    assert error_line(error) == own.splitlines()[0]
    assert error_line(error) in ("ValueError: bad value", "SyntaxError: '(' was never closed")
