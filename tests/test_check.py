"""`python -m pyro_pickle_fix check`, the main job."""

import json
import sys

import pytest
import torch
from support import GROUP_BUG, PYRO, run_python


def test_check_reports_the_bug_and_that_the_fix_makes_this_environment_safe():
    done = run_python("from pyro_pickle_fix.cli import main; raise SystemExit(main(['check']))")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("pyro-pickle-fix check:")
    version = ".".join(map(str, sys.version_info[:3]))
    assert f"python {version}," in lines[1] and "pyro-ppl " + ".".join(map(str, PYRO)) in lines[1]
    assert "wrapt " in lines[1] and "torch " in lines[1]
    # Every release strips pyro's weakref from the live Parameters, so "yes" everywhere.
    assert "this environment has the bug: yes" in done.stdout
    row = next(line for line in lines if line.strip().startswith("without the fix"))
    assert row.split()[3:] == (["no", "yes"])
    if GROUP_BUG:
        assert "original: TypeError: PickleGuide.guide() missing 3 required" in done.stdout
    with_fix = next(line for line in lines if line.strip().startswith("with the fix"))
    assert with_fix.split()[3:] == ["yes", "yes"]
    assert lines[-1].strip() == "Saving a guide is safe in this environment with pyro-pickle-fix."


@pytest.mark.slow  # the command line's work: the same on every Python, torch and pyro-ppl
@pytest.mark.once
def test_check_exits_non_zero_when_the_fix_does_not_protect(tmp_path):
    # A sitecustomize that switches the fix off in every interpreter, even the
    # one check starts with PYRO_PICKLE_FIX=1.
    (tmp_path / "sitecustomize.py").write_text("import os\nos.environ['PYRO_PICKLE_FIX'] = '0'\n")
    done = run_python(
        "from pyro_pickle_fix.cli import main; raise SystemExit(main(['check', '--json']))",
        env={"PYTHONPATH": str(tmp_path)},
    )
    assert done.returncode == 1, done.stderr
    found = json.loads(done.stdout.splitlines()[-1])
    assert found["safe"] is False
    assert found["with_fix"]["fix_active"] is False


# Stock loads trust the file on pyro-ppl 1.9.2 (weights_only=False), and on every
# release before torch 2.6 (torch.load's default was weights_only=False).
TORCH = tuple(int(part) for part in torch.__version__.split("+")[0].split(".")[:2])
STOCK_TRUSTS = PYRO >= (1, 9, 2) or TORCH < (2, 6)


def test_check_says_what_changed_and_what_then_fails_on_this_release():
    done = run_python(
        "from pyro_pickle_fix.cli import main; raise SystemExit(main(['check', '--json']))"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    found = json.loads(done.stdout.splitlines()[-1])
    stock, fixed = found["without_fix"], found["with_fix"]
    # Every release: the AutoGuide's save sets _model to None, and guide.model raises.
    assert "guide.__dict__['_model']: tuple -> None" in stock["autoguide"]["changes"]
    assert stock["autoguide"]["error"] == "TypeError: 'NoneType' object is not subscriptable"
    assert any(c.endswith("lost 'unconstrained'") for c in stock["original"]["changes"])
    assert fixed["autoguide"] == {"changes": [], "error": None}
    assert fixed["original"]["changes"] == []
    for name in ("param store", "optimizer"):
        assert fixed["loads"][name] == {
            "genuine": "loads",
            "foreign": "refused (UntrustedGlobalError)",
        }
        assert (stock["loads"][name]["foreign"] == "loads") is STOCK_TRUSTS
    if not STOCK_TRUSTS:  # pyro-ppl <= 1.9.1 on torch >= 2.6: its own file fails
        assert stock["loads"]["param store"]["genuine"] == "refused (UnpicklingError)"

    text = run_python(
        "from pyro_pickle_fix.cli import main; raise SystemExit(main(['check']))"
    ).stdout
    stock_part = text.split("did here without the fix:")[1].split("did here with the fix:")[0]
    assert "then: guide.model raises TypeError: 'NoneType' object is not subscriptable " in (
        stock_part
    )
    assert "(_model was set to None)" in stock_part
    assert ("the load trusts the file" in stock_part) is STOCK_TRUSTS
    if GROUP_BUG:
        assert "then: its next SVI step fails: TypeError:" in stock_part
    else:
        assert "then: it trains on" in stock_part
    fixed_part = text.split("did here with the fix:")[1]
    assert fixed_part.count("nothing changed") == 2 and "guide.model answers" in fixed_part
