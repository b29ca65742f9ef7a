"""patch / unpatch / status, lazy activation, opt-out and bad input."""

import importlib
import platform
import sys
import types
import warnings
from pathlib import Path

import pytest
import torch
from support import run_json, run_python

import pyro_pickle_fix
from pyro_pickle_fix import _engine as engine


def resolve(entry):
    owner = importlib.import_module(entry.module)
    *path, name = entry.path
    for part in path:
        owner = getattr(owner, part)
    return owner, name


def current(entry):
    """The target's own attribute; None where the class does not define it."""
    owner, name = resolve(entry)
    return vars(owner).get(name)


def _has_bug(repair):
    from support import PYRO

    torch_version = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
    return repair.needed(PYRO, sys.version_info[:3], torch_version) is not False


# Every pyro and torch repair whose bug this pyro-ppl, Python and torch have.
WRAPPED = [r for r in engine.repairs() if r.package in ("pyro-ppl", "torch") and _has_bug(r)]


def test_a_repair_is_in_place_exactly_where_its_bug_is():
    rows = {row.target: row for row in pyro_pickle_fix.status().targets}
    for repair in engine.repairs():
        if repair.package not in ("pyro-ppl", "torch"):
            continue
        row = rows[repair.dotted]
        assert row.wrapped is _has_bug(repair), (repair, row.note)
        if not row.wrapped:
            assert row.note == "left stock: this pyro-ppl, Python and torch do not have its bug"


def test_every_target_is_wrapped_once_around_pyros_original():
    pyro_pickle_fix.patch()
    pyro_pickle_fix.patch()
    for repair in WRAPPED:
        put = current(repair)
        assert engine._ours(put), repair
        if repair.how == "add":
            assert not hasattr(put, "__wrapped__"), repair  # the class had none
            continue
        original = put.__wrapped__
        assert type(original) is types.FunctionType, repair  # exactly one layer
        assert not engine._ours(original), repair
        assert original.__module__.split(".")[0] in ("pyro", "torch"), repair
        assert original.__name__ == repair.path[-1], repair
        if repair.how == "wrap":
            assert hasattr(put, "_self_wrapper"), repair  # a wrapt proxy


def test_an_added_method_runs_what_the_class_inherits():
    from pyro.contrib.easyguide.easyguide import EasyGuide

    pyro_pickle_fix.unpatch()
    try:
        assert "__setstate__" not in vars(EasyGuide)
        inherited = EasyGuide.__setstate__  # torch.nn.Module's
    finally:
        pyro_pickle_fix.patch()
    calls = []

    def spy(self, state):
        calls.append(state)
        inherited(self, state)

    torch.nn.Module.__setstate__ = spy
    try:
        from guides import Easy

        guide = object.__new__(Easy)
        guide.__setstate__({"groups": {}, "plates": {}})
    finally:
        torch.nn.Module.__setstate__ = inherited
    assert calls == [{"groups": {}, "plates": {}}]
    assert guide.__dict__["plates"] == {}


def test_unpatch_restores_the_original_objects_and_patch_rewraps():
    originals = {r.target: getattr(current(r), "__wrapped__", None) for r in WRAPPED}
    pyro_pickle_fix.unpatch()
    try:
        assert not pyro_pickle_fix.is_patched()
        for repair in WRAPPED:
            if repair.how == "add":  # the class had no such method: it has none again
                assert current(repair) is None, repair
                assert repair.path[-1] not in vars(resolve(repair)[0]), repair
            else:
                assert current(repair) is originals[repair.target], repair
        assert not any(row.wrapped for row in pyro_pickle_fix.status().targets)
    finally:
        pyro_pickle_fix.patch()
    assert pyro_pickle_fix.is_patched()
    for repair in WRAPPED:
        if repair.how != "add":
            assert current(repair).__wrapped__ is originals[repair.target]


def test_status_says_what_is_wrapped_as_the_classes_have_it():
    def wrapped_now():
        # Read off the classes themselves, not off the package's bookkeeping.
        return {r.dotted: engine._ours(current(r)) for r in WRAPPED}

    def reported():
        return {row.target: row.wrapped for row in pyro_pickle_fix.status().targets}

    assert all(wrapped_now().values())
    assert {t: w for t, w in reported().items() if t in wrapped_now()} == wrapped_now()
    pyro_pickle_fix.unpatch()
    try:
        assert not any(wrapped_now().values())
        assert not any(reported().values())
        assert str(pyro_pickle_fix.status()).splitlines()[0].startswith("pyro-pickle-fix off")
    finally:
        pyro_pickle_fix.patch()
    report = pyro_pickle_fix.status()
    assert report.as_dict()["targets"] == [row.as_dict() for row in report.targets]
    assert all(f"{row.target} " in str(report) for row in report.targets)


def test_status_says_per_target_which_bugs_this_python_and_pyro_have():
    from support import GROUP_BUG, GUIDE_MESSENGER_BUG, PY311

    rows = {row.target: row for row in pyro_pickle_fix.status().targets}
    group = rows["pyro.contrib.easyguide.easyguide.Group.__getstate__"]
    assert any("strong reference in the live __dict__" in bug for bug in group.bugs) is GROUP_BUG
    assert any("pickles, and the bytes fail to load" in bug for bug in group.bugs)  # always
    plates = rows["pyro.contrib.easyguide.easyguide.EasyGuide.__getstate__"]
    assert any("dictionary changed size during iteration" in bug for bug in plates.bugs)
    messenger = rows["pyro.poutine.guide.GuideMessenger.__getstate__"]
    assert messenger.needed is GUIDE_MESSENGER_BUG
    assert bool(messenger.bugs) is GUIDE_MESSENGER_BUG
    transform = rows["torch.distributions.transforms.Transform.__getstate__"]
    # weakrefs nulled in the live __dict__: only where object.__getstate__ returns it
    assert any("weakref attributes to None" in bug for bug in transform.bugs) is PY311
    assert transform.needed is PY311 and transform.wrapped is PY311
    deepcopy = rows["torch._tensor.Tensor.__deepcopy__"]
    assert deepcopy.needed is True  # the deepcopy bug is on every Python


def test_status_says_when_an_engine_is_not_installed():
    found = run_json(
        "import json, sys\n"
        "sys.modules['distributed'] = None  # as if not installed\n"
        "import pyro_pickle_fix, pyro\n"
        "row = [r for r in pyro_pickle_fix.status().targets if r.target.startswith('distr')][0]\n"
        "print(json.dumps(row.as_dict()))"
    )
    assert found["note"] == "distributed is not installed"
    assert found["needed"] is False and found["wrapped"] is False


def test_importing_the_package_alone_imports_no_torch_pyro_or_wrapt():
    found = run_json(
        "import sys, json, pyro_pickle_fix\n"
        "print(json.dumps(sorted(m for m in sys.modules"
        " if m.split('.')[0] in ('torch', 'pyro', 'wrapt'))))"
    )
    assert found == []


PROBE = """
import json, pyro_pickle_fix
from pyro_pickle_fix.diagnostics import tutorial as scenario
outcome = scenario.reproduce()
print(json.dumps({"patched": pyro_pickle_fix.is_patched(), "outcome": outcome}))
"""


@pytest.mark.slow  # the same on every pyro-ppl: once per Python
@pytest.mark.parametrize("order", ["fix first", "pyro first"])
def test_import_order_does_not_matter(order):
    code = PROBE if order == "fix first" else "import pyro.contrib.easyguide\n" + PROBE
    found = run_json(code, fix=None)
    assert found["patched"] is True
    assert found["outcome"]["original"] == {
        "ok": True,
        "error": None,
        "unchanged": True,
        "changes": [],
    }
    assert found["outcome"]["autoguide"] == {"changes": [], "error": None}


@pytest.mark.parametrize("value", ["0", "false", "OFF", "No", " off "])
def test_opt_out_values_activate_nothing(value):
    found = run_json(
        "import json, warnings\n"
        "warnings.simplefilter('error')\n"
        "import pyro_pickle_fix\n"
        "print(json.dumps(pyro_pickle_fix.status().active))",
        fix=None,
        env={"PYRO_PICKLE_FIX": value},
    )
    assert found is False


def test_opted_out_pyro_stays_stock_until_patch_is_called():
    found = run_json(
        "import json, pyro_pickle_fix, pyro.contrib.easyguide\n"
        "before = pyro_pickle_fix.is_patched()\n"
        "pyro_pickle_fix.patch()\n"
        "print(json.dumps([before, pyro_pickle_fix.is_patched()]))",
        fix=False,
    )
    assert found == [False, True]


def test_unexpected_value_warns_and_keeps_the_fix_on():
    done = run_python(
        "import pyro_pickle_fix; print(pyro_pickle_fix.status().active)",
        fix=None,
        env={"PYRO_PICKLE_FIX": "maybe"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"
    assert "PyroPickleFixWarning" in done.stderr
    assert "PYRO_PICKLE_FIX='maybe' is not understood; the fix stays on" in done.stderr
    assert "0, false, off, no" in done.stderr


def test_a_missing_target_is_skipped_with_one_warning_each():
    # A stand-in for a pyro release whose easyguide module has no Group, no EasyGuide.
    found = run_json(
        "import json, sys, types, warnings\n"
        "sys.modules['pyro.contrib.easyguide.easyguide'] = types.ModuleType('stand-in')\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    import pyro_pickle_fix, pyro\n"
        "    rows = {r.target: r.note for r in pyro_pickle_fix.status().targets}\n"
        "print(json.dumps({'warnings': [(w.category.__name__, str(w.message))"
        " for w in caught], 'note': rows['pyro.contrib.easyguide.easyguide.Group.__getstate__'],"
        " 'patched': pyro_pickle_fix.is_patched()}))"
    )
    # One per missing target (EasyGuide.__copy__, which needs __getstate__, says so
    # in status() alone).
    assert len(found["warnings"]) == 3, found
    assert {category for category, _ in found["warnings"]} == {"PyroPickleFixWarning"}
    state, setstate, group = sorted(message for _, message in found["warnings"])
    assert "skipped pyro.contrib.easyguide.easyguide.EasyGuide.__getstate__" in state
    assert "skipped pyro.contrib.easyguide.easyguide.EasyGuide.__setstate__" in setstate
    assert "skipped pyro.contrib.easyguide.easyguide.Group.__getstate__" in group
    assert "has no 'Group'" in group
    assert found["note"].startswith("left stock: ")
    assert found["patched"] is False  # a repair whose bug is here is missing


def test_an_unknown_pyro_leaves_what_reimplements_pyro_stock_with_one_warning(monkeypatch):
    pyro_pickle_fix.unpatch()
    real = engine._version
    monkeypatch.setattr(engine, "_version", lambda d: "1.10.0" if d == "pyro-ppl" else real(d))
    monkeypatch.setattr(engine, "_warned_unverified", False)
    try:
        with pytest.warns(pyro_pickle_fix.PyroPickleFixWarning) as caught:
            pyro_pickle_fix.patch()
        assert not pyro_pickle_fix.is_patched()
        messages = [str(w.message) for w in caught]
        assert len(messages) == 1
        assert "pyro-ppl 1.10.0 is outside the releases" in messages[0]
        assert "python -m pyro_pickle_fix check" in messages[0]
        rows = {row.target: row for row in pyro_pickle_fix.status().targets}
        # Fixed upstream in 1.9.2, so not needed on a later release; the rest unknown.
        assert rows["pyro.poutine.guide.GuideMessenger.__getstate__"].needed is False
        for repair in engine.repairs():
            row = rows[repair.dotted]
            if repair.reimplements and row.needed is None:
                assert not row.wrapped and "not verified against pyro-ppl 1.10.0" in row.note
            elif row.needed and (repair.package == "torch" or repair.target.endswith(".load")):
                assert row.wrapped, row.note  # calls pyro's or torch's own code: stays on
    finally:
        pyro_pickle_fix.unpatch()
        monkeypatch.undo()
        pyro_pickle_fix.patch()


def test_a_reloaded_package_adds_no_second_layer():
    found = run_json(
        "import importlib, json, pyro_pickle_fix, pyro.contrib.easyguide as e\n"
        "from pyro_pickle_fix import _engine\n"
        "importlib.reload(_engine); importlib.reload(pyro_pickle_fix)\n"
        "pyro_pickle_fix.patch()\n"
        "w = vars(e.easyguide.Group)['__getstate__']\n"
        "print(json.dumps([type(w.__wrapped__).__name__, pyro_pickle_fix.is_patched()]))"
    )
    assert found == ["function", True]


def test_a_failing_trigger_warns_and_leaves_the_import_working(monkeypatch):
    from pyro_pickle_fix import _trigger as trigger

    def broken(module):
        raise RuntimeError("boom")

    name = "json.tool"  # any module not imported yet
    monkeypatch.delitem(sys.modules, name, raising=False)
    trigger.when_imported(name, broken)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(name)
    assert module.__name__ == name
    assert module.__loader__.__class__.__name__ != "_ChainedLoader"
    messages = [
        str(w.message) for w in caught if w.category is pyro_pickle_fix.PyroPickleFixWarning
    ]
    assert len(messages) == 1 and "RuntimeError('boom')" in messages[0]


def test_activation_gives_no_warning():
    from conftest import ACTIVATION_WARNINGS

    ours = [
        str(w.message)
        for w in ACTIVATION_WARNINGS
        if issubclass(w.category, pyro_pickle_fix.PyroPickleFixWarning)
    ]
    assert ours == []


def test_the_repair_table_lists_every_repair_with_its_upstream_links():
    # docs/how-it-works.md's repair table (tools/docs_tables.py writes it from the
    # REPAIRS): each target has its rows, and they link every upstream issue its
    # bugs declare.
    page = (Path(__file__).parent.parent / "docs" / "how-it-works.md").read_text()
    table = [line for line in page.splitlines() if line.startswith("| `")]
    for repair in engine.repairs():
        rows = " ".join(line for line in table if line.startswith(f"| `{repair.dotted}` |"))
        assert rows, f"{repair.dotted} has no row in the repair table"
        for bug in repair.bugs:
            if bug.upstream:
                assert bug.upstream in rows, (repair.dotted, bug.upstream)


def test_status_fields_are_attributes_its_repr_names():
    from importlib.metadata import version

    import torch

    report = pyro_pickle_fix.status()
    # The installed distribution's version (torch.__version__ may add a local part,
    # 2.0.1+cu117 beside the distribution's 2.0.1).
    assert report.torch == version("torch") and torch.__version__.startswith(report.torch)
    assert report.python == platform.python_version()
    assert repr(report).startswith(f"Status(active={report.active!r}, pyro={report.pyro!r}, ")
    assert f"targets=[{len(report.targets)} TargetStatus]" in repr(report)
    assert report.as_dict()["torch"] == report.torch
    assert f"torch {report.torch}," in str(report).splitlines()[0]
