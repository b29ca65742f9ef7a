"""Loading you can trust: what the fix's weights-only loads allow, to whom, and what
they refuse (the param store's load, the optimizer's load, the allowlist, the
advisories per torch).  Each README sentence about untrusted files is backed here
or in test_roundtrip.py."""

from __future__ import annotations

import os
import pickle
import re
import threading
from pathlib import Path

import pyro
import pytest
import torch
from guides import DATA, global_model
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from support import PYRO, run_json, stock_error

import pyro_pickle_fix
from pyro_pickle_fix import _loading
from pyro_pickle_fix import _patcher as patching
from pyro_pickle_fix._targets import PATCHES
from pyro_pickle_fix.errors import PyroPickleFixWarning, UntrustedContentError

TORCH = tuple(int(part) for part in torch.__version__.split("+")[0].split(".")[:3])
ALLOWLIST = hasattr(torch.serialization, "safe_globals")  # torch 2.5+
needs_allowlist = pytest.mark.skipif(
    not ALLOWLIST, reason="this torch has no weights-only allowlist: the param store loads as stock"
)
constraints = torch.distributions.constraints
ROOT = Path(__file__).resolve().parents[1]
TESTS = str(Path(__file__).parent)
STORE_LOAD = "pyro.params.param_store:ParamStoreDict.load"
OPTIM_LOAD = "pyro.optim.optim:PyroOptim.load"


@pytest.fixture(autouse=True)
def _users_allowlist_is_restored():
    """Each test starts and ends with the process-wide allowlist it found."""
    if not ALLOWLIST:
        yield
        return
    before = list(torch.serialization.get_safe_globals())
    yield
    torch.serialization.clear_safe_globals()
    torch.serialization.add_safe_globals(before)


def _store_file(path: Path) -> Path:
    """A param-store file as pyro writes it: two constrained parameters and one not."""
    pyro.param("scale", torch.ones(3), constraint=constraints.positive)
    pyro.param("unit", torch.full((2,), 0.5), constraint=constraints.unit_interval)
    pyro.param("loc", torch.arange(3.0))
    pyro.get_param_store().save(path)
    pyro.clear_param_store()
    return path


def _checkpoint(path: Path) -> Path:
    """A file of the user's own that needs a constraint class: what they allow it for."""
    torch.save({"step": 3, "constraint": constraints.positive}, path)
    return path


# ---------------------------------------------------------------------------
# 1. No global side effect


@needs_allowlist
def test_the_users_own_allowlist_entries_survive_a_param_store_load(tmp_path):
    store, checkpoint = _store_file(tmp_path / "p.pt"), _checkpoint(tmp_path / "c.pt")
    torch.serialization.add_safe_globals(pyro_pickle_fix.safe_globals())
    before = set(torch.serialization.get_safe_globals())
    pyro.get_param_store().load(store)
    assert set(torch.serialization.get_safe_globals()) == before
    # The user's next load of their own checkpoint still works.
    loaded = torch.load(checkpoint, weights_only=True)
    assert type(loaded["constraint"]) is type(constraints.positive)


@needs_allowlist
def test_a_param_store_load_adds_nothing_to_the_process_wide_allowlist(tmp_path):
    store = _store_file(tmp_path / "p.pt")
    before = set(torch.serialization.get_safe_globals())  # torch registers some itself
    assert not before & set(pyro_pickle_fix.safe_globals())
    seen = []

    def map_location(storage, location):  # runs while torch unpickles the store
        seen.append(set(torch.serialization.get_safe_globals()))
        return storage

    pyro.get_param_store().load(store, map_location=map_location)
    assert seen and all(allowed == before for allowed in seen)
    assert set(torch.serialization.get_safe_globals()) == before
    assert sorted(pyro.get_param_store().keys()) == ["loc", "scale", "unit"]


def _refusal(checkpoint: Path) -> str:
    """What this torch says when a weights-only load of ``checkpoint`` is refused."""
    with pytest.raises(pickle.UnpicklingError) as refused:
        torch.load(checkpoint, weights_only=True)
    return str(refused.value)


@needs_allowlist
def test_another_threads_load_during_a_param_store_load_is_refused_as_without_it(tmp_path):
    store, checkpoint = _store_file(tmp_path / "p.pt"), _checkpoint(tmp_path / "c.pt")
    stock = _refusal(checkpoint)
    assert "torch.distributions.constraints._GreaterThan" in stock
    inside, finished = threading.Event(), threading.Event()
    seen: dict[str, object] = {}

    def other_thread() -> None:
        inside.wait(60)
        try:
            torch.load(checkpoint, weights_only=True)
            seen["other"] = "loaded"
        except pickle.UnpicklingError as error:
            seen["other"] = str(error)
        finally:
            finished.set()

    def map_location(storage, location):
        if not inside.is_set():  # the first tensor: let the other thread load now
            inside.set()
            seen["other finished during the load"] = finished.wait(60)
        return storage

    thread = threading.Thread(target=other_thread)
    thread.start()
    try:
        pyro.get_param_store().load(store, map_location=map_location)
    finally:
        inside.set()
        thread.join(60)
    assert seen["other finished during the load"] is True
    assert seen["other"] == stock
    assert sorted(pyro.get_param_store().keys()) == ["loc", "scale", "unit"]


@needs_allowlist
def test_another_threads_safe_globals_block_keeps_its_entries(tmp_path):
    store, checkpoint = _store_file(tmp_path / "p.pt"), _checkpoint(tmp_path / "c.pt")
    entered, store_loaded = threading.Event(), threading.Event()
    seen: dict[str, object] = {}

    def other_thread() -> None:
        with torch.serialization.safe_globals(pyro_pickle_fix.safe_globals()):
            entered.set()
            store_loaded.wait(60)
            try:
                seen["other"] = type(torch.load(checkpoint, weights_only=True)["constraint"])
            except pickle.UnpicklingError as error:
                seen["other"] = str(error)

    thread = threading.Thread(target=other_thread)
    thread.start()
    try:
        assert entered.wait(60)
        pyro.get_param_store().load(store)
    finally:
        store_loaded.set()
        thread.join(60)
    assert seen["other"] is type(constraints.positive)


@needs_allowlist
def test_torchs_unpickler_is_stock_again_after_each_load(tmp_path):
    import torch._weights_only_unpickler as unpickler

    torchs = unpickler._get_user_allowed_globals
    store = _store_file(tmp_path / "p.pt")
    pyro.get_param_store().load(store)
    assert unpickler._get_user_allowed_globals is torchs
    torch.save({"params": {}, "constraints": {"x": os.system}}, tmp_path / "evil.pt")
    with pytest.raises(pyro_pickle_fix.UntrustedGlobalError):
        pyro.get_param_store().load(tmp_path / "evil.pt")
    assert unpickler._get_user_allowed_globals is torchs


def test_the_per_call_allowlist_works_on_every_torch_that_has_an_allowlist():
    # torch 2.5 to 2.15 (the matrix) read the user allowlist through the function the
    # fix replaces for one call; 2.0 to 2.4 have no allowlist at all.
    import torch._weights_only_unpickler as unpickler

    assert (_loading.hook_point() is unpickler) is ALLOWLIST
    row = _status_row(STORE_LOAD)
    assert row.wrapped is ALLOWLIST


@needs_allowlist
def test_where_torch_lacks_the_internal_the_store_load_stays_stock_with_a_warning(monkeypatch):
    from pyro.params.param_store import ParamStoreDict

    entry = next(e for e in PATCHES if e.target == STORE_LOAD)
    monkeypatch.setattr(_loading, "hook_point", lambda: None)
    with (
        pytest.warns(PyroPickleFixWarning, match="param-store files load as stock pyro"),
        pytest.raises(_loading.Unsupported),
    ):
        _loading.make_safe_load(vars(ParamStoreDict)["load"], entry)


# ---------------------------------------------------------------------------
# 2. The optimizer's load


class Payload:
    """Unpickling it runs a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


OPTIMIZERS = {
    "Adam": lambda: pyro.optim.Adam({"lr": 0.05}),
    "ExponentialLR": lambda: pyro.optim.ExponentialLR(
        {"optimizer": torch.optim.Adam, "optim_args": {"lr": 0.05}, "gamma": 0.5}
    ),
}


def _optim_state_with(value: object) -> dict:
    return {"AutoNormal.locs.g0": {"state": {}, "param_groups": [{"lr": 0.1, "x": value}]}}


def _load_optim(path: Path) -> object:
    optim = pyro.optim.Adam({"lr": 0.1})
    optim.load(path)
    return optim


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_a_crafted_optimizer_file_is_refused_and_none_of_it_runs(tmp_path, optimizer):
    path, marker = tmp_path / "evil_optim.pt", tmp_path / "ran"
    torch.save(_optim_state_with(Payload(marker)), path)
    optim = OPTIMIZERS[optimizer]()
    with pytest.raises(pyro_pickle_fix.UntrustedGlobalError) as refused:
        optim.load(path)
    assert not marker.exists()
    assert refused.value.name in ("posix.system", "os.system")
    message = str(refused.value)
    assert "as an optimizer file" in message and "Nothing was loaded" in message
    assert "optim.set_state(torch.load(path, weights_only=False))" in message
    assert optim._state_waiting_to_be_consumed == {}


def test_stock_runs_the_code_in_an_optimizer_file(tmp_path):
    path, marker = tmp_path / "evil_optim.pt", tmp_path / "ran"
    torch.save(_optim_state_with(Payload(marker)), path)
    found = stock_error(f"pyro.optim.Adam({{'lr': 0.1}}).load({str(path)!r})")
    # 1.9.2 passes weights_only=False; older releases take torch's default (< 2.6: False).
    assert marker.exists() is (PYRO >= (1, 9, 2) or TORCH < (2, 6)), found


def _resume_scenario(tmp_path: Path, make_optim, resume: str) -> dict[str, torch.Tensor]:
    """Train 3 steps and save; then take one more step, from the live optimizer
    ("live"), from the files ("files"), or from the param store with a new optimizer
    ("fresh").  The parameters after that step."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = AutoNormal(global_model)
    optim = make_optim()
    svi = SVI(global_model, guide, optim, Trace_ELBO())
    for _ in range(3):
        svi.step(DATA)
        if hasattr(optim, "step"):
            optim.step()  # a scheduler's epoch
    pyro.get_param_store().save(tmp_path / "params.pt")
    optim.save(tmp_path / "optim.pt")
    if resume != "live":
        pyro.clear_param_store()
        pyro.get_param_store().load(tmp_path / "params.pt")
        guide = AutoNormal(global_model)
        guide(DATA)  # its prototype trace, before the seed (the live guide has one)
        optim = make_optim()
        if resume == "files":
            optim.load(tmp_path / "optim.pt")
        svi = SVI(global_model, guide, optim, Trace_ELBO())
    pyro.set_rng_seed(1)
    svi.step(DATA)
    store = pyro.get_param_store()
    return {name: store[name].detach().clone() for name in store}


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_an_optimizer_state_pyro_saved_loads_and_training_resumes(tmp_path, optimizer):
    make = OPTIMIZERS[optimizer]
    live = _resume_scenario(tmp_path, make, "live")
    from_files = _resume_scenario(tmp_path, make, "files")
    fresh = _resume_scenario(tmp_path, make, "fresh")
    assert from_files.keys() == live.keys()
    for name in live:
        assert torch.equal(from_files[name], live[name]), name
    # The loaded state mattered: a new optimizer takes a different step.
    assert any(not torch.equal(fresh[name], live[name]) for name in live)


# ---------------------------------------------------------------------------
# Crafted content that weights-only loading lets through


def _self_referencing() -> object:
    constraint = constraints.independent(constraints.positive, 1)
    constraint.base_constraint = constraint
    return constraint


def _nested(depth: int) -> object:
    constraint = constraints.positive
    for _ in range(depth):
        constraint = constraints.independent(constraint, 0)
    return constraint


REPEATED = 10**8  # elements a stride-0 tensor claims, from one stored value

CRAFTED_STORES = {
    # a constraint that is its own base: repr, .event_dim and pyro.param recurse forever
    "cycle": (
        lambda: {"params": {"x": torch.ones(2)}, "constraints": {"x": _self_referencing()}},
        "constraints['x'].base_constraint",
        "refers back to an object that contains it",
    ),
    "deep": (
        lambda: {"params": {"x": torch.ones(2)}, "constraints": {"x": _nested(40)}},
        "constraints['x']" + ".base_constraint" * 15,
        "nested more than 32 levels deep",
    ),
    # one stored float, repeated: pyro.param then computes on 10**8 elements
    "stride 0": (
        lambda: {
            "params": {"x": torch.zeros(1).expand(REPEATED)},
            "constraints": {"x": constraints.positive},
        },
        "params['x']",
        "whose data in the file is 1 element:",
    ),
    "a class for a constraint": (
        lambda: {"params": {"x": torch.ones(2)}, "constraints": {"x": type(constraints.positive)}},
        "constraints['x']",
        "is torch.distributions.constraints._GreaterThan (a builtins.type)",
    ),
    "not a store": (lambda: [torch.ones(2)], "", "is a builtins.list"),
    "a list for a parameter": (
        lambda: {"params": {"x": [1.0, 2.0]}, "constraints": {}},
        "params['x']",
        "is a builtins.list",
    ),
}


@needs_allowlist
@pytest.mark.parametrize("crafted", sorted(CRAFTED_STORES))
def test_crafted_but_allowed_store_content_is_refused(tmp_path, crafted):
    make, where, what = CRAFTED_STORES[crafted]
    path = tmp_path / "crafted.pt"
    torch.save(make(), path)
    pyro.param("kept", torch.ones(1))
    with pytest.raises(UntrustedContentError) as refused:
        pyro.get_param_store().load(path)
    assert isinstance(refused.value, pickle.UnpicklingError)
    assert refused.value.where.startswith(where), refused.value.where
    message = str(refused.value)
    assert what in message and "Nothing was loaded" in message, message
    assert "set_state(torch.load(path, weights_only=False))" in message
    assert list(pyro.get_param_store().keys()) == ["kept"]  # unchanged


@needs_allowlist
def test_a_file_the_unpickler_refuses_for_another_reason_says_why(tmp_path):
    path = tmp_path / "protocol4.pt"
    torch.save({"params": {"x": torch.ones(2)}, "constraints": {}}, path, pickle_protocol=4)
    with pytest.raises(pyro_pickle_fix.UntrustedGlobalError) as refused:
        pyro.get_param_store().load(path)
    assert refused.value.name is None
    message = str(refused.value)
    assert "refused it: Unsupported operand 149. Nothing was loaded." in message, message
    assert "set_state(torch.load(path, weights_only=False))" in message


def test_stock_loads_a_self_referencing_constraint_and_then_recurses(tmp_path):
    path = tmp_path / "cycle.pt"
    torch.save(CRAFTED_STORES["cycle"][0](), path)
    found = run_json(
        "import json, pyro\n"
        "found = {}\n"
        "try:\n"
        f"    pyro.get_param_store().load({str(path)!r}); found['load'] = None\n"
        "except Exception as e:\n"
        "    found['load'] = type(e).__name__\n"
        "if found['load'] is None:\n"
        "    try:\n"
        "        pyro.param('x'); found['param'] = None\n"
        "    except RecursionError as e:\n"
        "        found['param'] = 'RecursionError'\n"
        "print(json.dumps(found))",
        fix=False,
    )
    if PYRO >= (1, 9, 2) or TORCH < (2, 6):  # stock loads it
        assert found == {"load": None, "param": "RecursionError"}
    else:  # stock's weights-only load refuses every constraint class
        assert found == {"load": "UnpicklingError"}


def test_stock_loads_a_tensor_that_repeats_one_value(tmp_path):
    path = tmp_path / "stride0.pt"
    torch.save(CRAFTED_STORES["stride 0"][0](), path)
    assert path.stat().st_size < 4096
    found = run_json(
        "import json, pyro\n"
        "try:\n"
        f"    pyro.get_param_store().load({str(path)!r})\n"
        "    x = pyro.get_param_store()._params['x']\n"
        "    found = [x.numel(), x.untyped_storage().nbytes()]\n"
        "except Exception as e:\n"
        "    found = type(e).__name__\n"
        "print(json.dumps(found))",
        fix=False,
    )
    if PYRO >= (1, 9, 2) or TORCH < (2, 6):
        assert found == [REPEATED, 4]
    else:
        assert found == "UnpicklingError"


def test_a_shared_constraint_and_a_view_are_not_refused(tmp_path):
    # What pyro's own files hold: one constraint object shared by parameters, and a
    # parameter that is a view of a larger tensor.
    shared = constraints.independent(constraints.positive, 1)
    base = torch.ones(4, 3)
    state = {
        "params": {"a": base[0], "b": base[1:3], "c": torch.ones(3)},
        "constraints": {"a": shared, "b": shared, "c": _nested(10)},
    }
    _loading.check_store_state("f", state)
    _loading.check_optim_state("f", {"a": {"state": {0: {"exp_avg": base[1]}}}})


def test_a_crafted_optimizer_state_is_refused(tmp_path):
    path = tmp_path / "stride0_optim.pt"
    repeated = torch.zeros(1, dtype=torch.float64).expand(REPEATED)
    torch.save({"AutoNormal.locs.g0": {"state": {0: {"exp_avg": repeated}}}}, path)
    with pytest.raises(UntrustedContentError) as refused:
        _load_optim(path)
    assert refused.value.where == "state['AutoNormal.locs.g0']['state'][0]['exp_avg']"
    assert "save .clone() of it" in str(refused.value)
    cyclic: list = []
    cyclic.append(cyclic)
    torch.save(_optim_state_with(cyclic), path)
    with pytest.raises(UntrustedContentError, match="a cycle"):
        _load_optim(path)


def test_stock_loads_an_optimizer_state_that_repeats_one_value(tmp_path):
    path = tmp_path / "stride0_optim.pt"
    repeated = torch.zeros(1, dtype=torch.float64).expand(REPEATED)
    torch.save({"AutoNormal.locs.g0": {"state": {0: {"exp_avg": repeated}}}}, path)
    assert path.stat().st_size < 4096
    found = run_json(
        "import json, pyro\n"
        "optim = pyro.optim.Adam({'lr': 0.1})\n"
        f"optim.load({str(path)!r})\n"
        "x = optim._state_waiting_to_be_consumed['AutoNormal.locs.g0']['state'][0]['exp_avg']\n"
        "print(json.dumps(x.numel()))",
        fix=False,
    )
    assert found == REPEATED  # every stock release, on every torch


BUILT: list[dict] = []


class Recorder(constraints.Constraint):
    """An allowed class whose own code records that it ran."""

    def __setstate__(self, state: dict) -> None:
        BUILT.append(state)
        self.__dict__.update(state)


@needs_allowlist
def test_allowed_classes_are_built_before_a_later_global_is_refused(tmp_path):
    # Loading streams: what comes before the refused global is built first (by the
    # allowed classes' own code), then thrown away.
    path, marker = tmp_path / "evil.pt", tmp_path / "ran"
    recorder = Recorder()
    recorder.n = 1
    torch.save({"params": {}, "constraints": {"a": recorder, "b": Payload(marker)}}, path)
    torch.serialization.add_safe_globals([Recorder])
    BUILT.clear()
    with pytest.raises(pyro_pickle_fix.UntrustedGlobalError):
        pyro.get_param_store().load(path)
    assert BUILT == [{"n": 1}]  # the allowed class's code ran
    assert not marker.exists()  # the code the file names did not
    assert list(pyro.get_param_store().keys()) == []


# ---------------------------------------------------------------------------
# 4. A fixed allowlist


def _dotted(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def test_the_allowlist_is_every_constraint_class_torch_and_pyro_define():
    import pyro.distributions  # noqa: F401  (every distribution module)
    import torch.distributions  # noqa: F401

    defined, pending = set(), [constraints.Constraint]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if cls.__module__.split(".")[0] in ("torch", "pyro"):
            defined.add(_dotted(cls))
    resolved = [_dotted(cls) for cls in pyro_pickle_fix.safe_globals()]
    assert resolved == [name for name in _loading.ALLOWED if name in defined]
    assert defined == set(resolved) | (defined & set(_loading.NOT_ALLOWED))


SAFE_GLOBALS = """
import json, sys
{first}
import pyro_pickle_fix
print(json.dumps([f"{{c.__module__}}.{{c.__qualname__}}" for c in pyro_pickle_fix.safe_globals()]))
"""

OTHER_CONSTRAINTS = """
import torch.distributions, pyro.distributions, pyro.contrib.epidemiology
class Elsewhere(torch.distributions.constraints.Constraint):
    pass
Elsewhere.__module__ = "pyro.contrib.elsewhere"  # as if another pyro module defined it
"""


@pytest.mark.parametrize("first", ["", "import torch", OTHER_CONSTRAINTS])
def test_safe_globals_is_the_same_whatever_was_imported_first(first):
    found = run_json(SAFE_GLOBALS.format(first=first), fix=True)
    assert found == [_dotted(cls) for cls in pyro_pickle_fix.safe_globals()]
    assert "pyro.contrib.elsewhere.Elsewhere" not in found


def test_the_readme_lists_the_allowlist():
    paragraph = _readme_section("## Save and load").split("allows these classes")[1]
    listed = set(re.findall(r"`(_?\w+)`", paragraph.split("\n\n")[0]))
    assert listed == {name.rpartition(".")[2] for name in _loading.ALLOWED}


def _readme_section(heading: str) -> str:
    text = (ROOT / "README.md").read_text()
    return text.split(heading, 1)[1].split("\n## ", 1)[0]


# ---------------------------------------------------------------------------
# 3. What torch promises, per version


@pytest.mark.parametrize(
    ("version", "named"),
    [
        ((2, 0, 1), ["CVE-2025-32434", "CVE-2026-24747"]),
        ((2, 5, 1), ["CVE-2025-32434", "CVE-2026-24747"]),
        ((2, 6, 0), ["CVE-2026-24747"]),
        ((2, 9, 1), ["CVE-2026-24747"]),
        ((2, 10, 0), []),
        ((2, 13, 0), []),
        ((2, 15, 0), []),
    ],
)
def test_the_advisory_for_each_torch(version, named):
    text = _loading.advisory(version)
    if not named:
        assert text is None
        return
    assert text is not None
    assert re.findall(r"CVE-\d+-\d+", text) == named
    assert "not safe for a file you did not make" in text and "torch 2.10 or newer" in text


def test_status_names_the_advisory_that_applies_to_this_torch():
    report = pyro_pickle_fix.status()
    expected = _loading.advisory(TORCH)
    assert report.advisory == expected
    assert report.as_dict()["advisory"] == expected
    if TORCH < (2, 10):
        assert "CVE-2026-24747" in str(report)
    else:
        assert "CVE-" not in str(report)


def test_status_names_the_advisory_on_an_older_torch(monkeypatch):
    installed = patching.installed_version
    monkeypatch.setattr(
        patching,
        "installed_version",
        lambda name: "2.5.1" if name == "torch" else installed(name),
    )
    text = str(pyro_pickle_fix.status())
    assert "CVE-2025-32434" in text and "CVE-2026-24747" in text


def test_the_optimizer_load_is_wrapped_on_every_torch():
    assert _status_row(OPTIM_LOAD).wrapped is True
    original = vars(pyro.optim.optim.PyroOptim)["load"].__wrapped__
    assert original.__module__ == "pyro.optim.optim" and original.__name__ == "load"


def _status_row(target: str) -> pyro_pickle_fix.TargetStatus:
    dotted = target.replace(":", ".")
    return next(row for row in pyro_pickle_fix.status().targets if row.target == dotted)
