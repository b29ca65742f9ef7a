"""`python -m pyro_pickle_fix check`, the main job."""

import json
import sys

import pytest
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
