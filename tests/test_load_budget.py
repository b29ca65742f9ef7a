"""A crafted file costs what its size allows, and no more (issue 28, item 2): each
limit of the loader is compared before the work or the memory it bounds is spent,
and is read from where the cost comes from (the zip directory's real size, the
slices a ``_Cat`` or ``_Stack`` hands its parts, the dtype an optimizer casts its
state to, the names a scheduler's ``load_state_dict`` writes into it).  The budget
itself (:data:`pyro_pickle_fix.loader.checks.BUDGET`) is held over the worst files
of each finding.  And (item 5) a fork during another thread's first load leaves a
child that can load."""

from __future__ import annotations

import io
import os
import pickletools
import struct
import sys
import tracemalloc
import zipfile
from pathlib import Path

import pyro
import pytest
import torch
from support import run_json
from test_loading import (
    FORK_CHILD,
    REAL,
    G,
    New,
    _central_entry,
    _local_header,
    _refused_optim,
    _refused_store,
    dumps,
    floats,
    saved_scheduler,
    store,
    tensor,
    write_file,
)

from pyro_pickle_fix.errors import UntrustedContentError
from pyro_pickle_fix.loader import archive as loader_archive
from pyro_pickle_fix.loader import checks as loader_checks

constraints = torch.distributions.constraints


def _peak_and_calls(load) -> tuple[int, int]:
    """The Python memory peak (tracemalloc) and the number of Python and C calls
    that ``load()`` makes, whether it loads or is refused: a measure of its time
    that does not depend on what else the machine is doing."""
    calls = 0

    def count(frame, event, arg):
        nonlocal calls
        calls += 1

    tracemalloc.start()
    sys.setprofile(count)
    try:
        load()
    except UntrustedContentError:
        pass
    finally:
        sys.setprofile(None)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak, calls


# ---------------------------------------------------------------------------
# Finding: a long list is built and walked before it is counted


def _lists_file(path: Path, item: bytes, count: int, entries: int = 1) -> Path:
    """An optimizer file ``{"p0": {"state": [item] * count}, ...}`` written opcode
    by opcode, nothing memoized: one pickle byte an ``item`` (``N`` None, ``]`` a new
    empty list)."""
    body = bytearray(b"\x80\x02}(")
    for index in range(entries):
        name = f"p{index}".encode()
        body += b"X" + struct.pack("<I", len(name)) + name
        body += b"}X\x05\x00\x00\x00state](" + item * count + b"es"
    body += b"u."
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", bytes(body))
        archive.writestr("archive/byteorder", "little")
        archive.writestr("archive/version", "3\n")
    return path


def test_a_long_optimizer_list_is_refused_before_it_is_walked(tmp_path):
    # 2.9 MB of these took 510 MB and 4 s to refuse: the walk made a (child, place)
    # pair for every item before it counted them against 10,000.
    path = _lists_file(tmp_path / "nones.pt", b"N", 300_000)
    size = path.stat().st_size
    peak, _ = _peak_and_calls(lambda: pyro.optim.Adam({"lr": 0.1}).load(path))
    refused = _refused_optim(path, UntrustedContentError)
    assert "expands to more than 10000 objects" in str(refused)
    # The unpickler's list (a reference an item, on its stack and in the list) and
    # the file's bytes, no more (the walk took 165 bytes an item).
    assert peak < 24 * size, (peak, size)


# ---------------------------------------------------------------------------
# Finding: the record count read from the end record's 16-bit field


def _records_zip(count: int, claimed: int) -> bytes:
    """A stored zip of ``count`` records (a state, its byte order and empty
    records) whose end record claims ``claimed``."""
    members = [("archive/data.pkl", dumps(store({}))), ("archive/byteorder", b"little")]
    members += [(f"archive/data/{i}", b"") for i in range(count - 2)]
    out, central = bytearray(), bytearray()
    for name, payload in members:
        central += _central_entry(name, payload, len(out))
        out += _local_header(name, payload) + payload
    sizes = (claimed, claimed, len(central), len(out), 0)
    return bytes(out + central + struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, *sizes))


def test_the_record_count_comes_from_the_directory_not_the_end_record(tmp_path, monkeypatch):
    # 140,007 records whose end record claimed 7 loaded (here with a bound of 1,000).
    assert loader_archive.MAX_RECORDS == 2**17
    monkeypatch.setattr(loader_archive, "MAX_RECORDS", 1_000)
    path = tmp_path / "records.pt"
    path.write_bytes(_records_zip(1_007, 7))
    refused = _refused_store(path, UntrustedContentError)
    assert "is an archive of more than 1000 records" in str(refused), refused
    path.write_bytes(_records_zip(1_000, 1_000))
    pyro.get_param_store().load(path)


# ---------------------------------------------------------------------------
# Finding: crafted zip offsets and versions escape as bare errors


def _zip_with(change_version: int | None = None, offset64: int | None = None, shift: int = 0):
    """A store's zip whose last record's directory entry needs ``change_version``,
    or gives its local header's offset as ``offset64`` in a zip64 extra field; the
    end record's directory offset moved by ``shift``."""
    members = [
        ("archive/data.pkl", dumps(store({}))),
        ("archive/byteorder", b"little"),
        ("archive/version", b"3\n"),
    ]
    out, central = bytearray(), bytearray()
    for name, payload in members:
        entry = bytearray(_central_entry(name, payload, len(out)))
        out += _local_header(name, payload) + payload
        if name == "archive/version":
            if change_version is not None:
                struct.pack_into("<H", entry, 6, change_version)
            if offset64 is not None:
                extra = struct.pack("<HHQ", 1, 8, offset64)
                struct.pack_into("<I", entry, 42, 0xFFFFFFFF)
                struct.pack_into("<H", entry, 30, len(extra))
                entry += extra
        central += entry
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 3, 3, len(central), len(out) + shift, 0)
    return bytes(out + central + end)


@pytest.mark.parametrize(
    "crafted",
    [
        pytest.param({"offset64": 2**62}, id="offset-past-the-file"),  # OSError: [Errno 22]
        pytest.param({"offset64": 2**64 - 1}, id="offset-past-off_t"),  # ValueError: cannot fit
        pytest.param({"shift": 10}, id="directory-offset"),  # OSError: [Errno 22]
    ],
)
def test_a_crafted_zip_offset_is_the_packages_error(tmp_path, crafted):
    path = tmp_path / "offset.pt"
    path.write_bytes(_zip_with(**crafted))
    refused = _refused_store(path, UntrustedContentError)
    assert isinstance(refused, UntrustedContentError)


def test_a_zip_version_no_reader_needs_loads_as_the_same_file(tmp_path):
    # "version needed to extract" 25.5 escaped as NotImplementedError; the loader
    # reads stored records itself and needs no feature a version names.
    path = tmp_path / "version.pt"
    path.write_bytes(_zip_with(change_version=255))
    pyro.clear_param_store()
    pyro.param("kept", torch.ones(1))
    pyro.get_param_store().load(path)
    assert list(pyro.get_param_store().keys()) == ["kept"]


# ---------------------------------------------------------------------------
# Finding: the broadcast check ignored how _Cat and _Stack slice the parameter


def _sliced(count: int, kind: str) -> tuple[dict, dict[str, bytes]]:
    """A parameter of ``count`` elements under a _Cat (or _Stack) of ``count``
    parts, each an interval whose bounds are one shared tensor of ``count``."""
    lower, upper = tensor("0", count, (count,)), tensor("1", count, (count,))
    interval = New(
        G("torch.distributions.constraints._Interval"),
        {"lower_bound": lower, "upper_bound": upper},
    )
    parts = [interval] * count
    if kind == "cat":
        state = {"cseq": parts, "dim": 0, "lengths": [1] * count}
        sliced = New(G("torch.distributions.constraints._Cat"), state)
    else:
        sliced = New(G("torch.distributions.constraints._Stack"), {"cseq": parts, "dim": 0})
    data = {"0": floats(*[0.0] * count), "1": floats(*[1.0] * count), "2": floats(*[0.5] * count)}
    return store({"x": tensor("2", count, (count,))}, {"x": sliced}), data


@pytest.mark.parametrize("kind", ["cat", "stack"])
def test_a_sliced_constraint_is_checked_slice_by_slice(tmp_path, kind):
    # Each part sees one element of the parameter and bounds of 300: pyro.param
    # returned 90,000 elements from 900 in the file (6,000 parts: 36 M, +280 MB a call).
    state, data = _sliced(300, kind)
    path = write_file(tmp_path / f"{kind}.pt", state, data)
    refused = _refused_store(path, UntrustedContentError)
    assert refused.where.startswith("constraints['x']")
    assert "broadcast" in str(refused), refused


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ({"cseq": [{}, {}], "dim": 0, "lengths": [1, 1]}, "cseq is not a list of constraints"),
        ({"cseq": [REAL, REAL], "dim": 0}, "_Cat without a length for each of its 2 parts"),
        ({"cseq": [REAL, REAL], "dim": 0, "lengths": [2]}, "without a length for each"),
    ],
)
def test_a_cat_unlike_what_its_constructor_makes_is_refused_before_the_broadcast_check(
    tmp_path, monkeypatch, state, message
):
    # Parts that are no constraints, or no lengths (the check assumed [1] * parts):
    # the broadcast check cached two entries a part before it found anything wrong.
    def broadcast_check(*args):
        raise AssertionError("the broadcast check ran")

    monkeypatch.setattr(loader_checks.Check, "fits", broadcast_check)
    cat = New(G("torch.distributions.constraints._Cat"), state)
    path = write_file(
        tmp_path / "cat.pt", store({"x": tensor("0", 2, (2,))}, {"x": cat}), {"0": floats(0, 0)}
    )
    refused = _refused_store(path, UntrustedContentError)
    assert refused.where == "constraints['x']", refused
    assert message in str(refused), refused


def test_a_sliced_constraint_shared_by_many_parameters_is_compared_once(tmp_path, monkeypatch):
    # One _Cat of 100 parts over 2,000 parameters of one shape: each (constraint,
    # shape) pair is compared once for the whole file, not once a parameter.
    monkeypatch.setattr(loader_checks, "MAX_FITS_WORK", 5_000)
    bound = tensor("1", 1, (1,))
    parts = [
        New(G("torch.distributions.constraints._GreaterThan"), {"lower_bound": bound})
        for _ in range(100)
    ]
    cat = New(G("torch.distributions.constraints._Cat"), {"cseq": parts, "dim": 0})
    cat.state["lengths"] = [1] * 100
    params = {f"p{i}": tensor("0", 100, (100,)) for i in range(2_000)}
    path = write_file(
        tmp_path / "shared.pt",
        store(params, dict.fromkeys(params, cat)),
        {"0": floats(*[0.0] * 100), "1": floats(-1.0)},
    )
    pyro.clear_param_store()
    pyro.get_param_store().load(path)
    assert len(pyro.get_param_store()) == 2_000


def test_genuine_cat_and_stack_constraints_load_and_constrain_as_saved(tmp_path):
    cat = constraints.cat(
        [constraints.positive, constraints.interval(torch.zeros(2), torch.ones(2))], 0, [3, 2]
    )
    stack = constraints.stack(
        [constraints.greater_than(torch.zeros(3)), constraints.unit_interval], 1
    )
    pyro.clear_param_store()
    pyro.param("c", torch.tensor([1.0, 2.0, 3.0, 0.25, 0.75]), constraint=cat)
    pyro.param("s", torch.full((3, 2), 0.5), constraint=stack)
    expected = {name: pyro.param(name).detach().clone() for name in ("c", "s")}
    path = tmp_path / "sliced.pt"
    pyro.get_param_store().save(path)
    pyro.clear_param_store()
    pyro.get_param_store().load(path)
    for name, value in expected.items():
        assert torch.allclose(pyro.param(name).detach(), value), name


# ---------------------------------------------------------------------------
# Finding: optimizer state counted in the file's dtype, not the one it is cast to


def test_optimizer_state_is_counted_in_the_dtype_it_is_cast_to(tmp_path):
    # load_state_dict casts a floating parameter's state to the parameter's dtype:
    # uint8 state for a float64 parameter cost 16 times the file at the first step.
    count = 64_000
    state = {"exp_avg": tensor("0", count, (count,), storage="ByteStorage")}
    groups = [{"lr": 0.1, "params": [0]}]
    path = write_file(
        tmp_path / "uint8.pt",
        {"x": {"state": {0: state}, "param_groups": groups}},
        {"0": bytes(count)},
    )
    refused = _refused_optim(path, UntrustedContentError)
    assert "the dtype Optimizer.load_state_dict casts it to" in str(refused), refused


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_an_optimizer_file_of_every_training_dtype_loads(tmp_path, dtype):
    # What the cast rule must not refuse: Adam's state for a parameter of each dtype.
    param = torch.nn.Parameter(torch.linspace(0, 1, 50_000, dtype=dtype))
    adam = torch.optim.Adam([param], lr=0.1)
    try:
        for _ in range(2):
            param.grad = torch.ones_like(param)
            adam.step()
    except RuntimeError as error:  # torch 2.0 has no float16 Adam on the CPU
        pytest.skip(f"torch {torch.__version__} cannot train {dtype} here: {error}")
    path = tmp_path / "adam.pt"
    torch.save({"x": adam.state_dict()}, path)
    optim = pyro.optim.Adam({"lr": 0.1})
    optim.load(path)
    loaded = optim._state_waiting_to_be_consumed["x"]["state"][0]
    assert torch.equal(loaded["exp_avg_sq"], adam.state[param]["exp_avg_sq"])


# ---------------------------------------------------------------------------
# Finding: a scheduler's state may overwrite its methods


#: Whether pyro saves each scheduler's state beside its optimizer's.
NESTED = hasattr(pyro.optim.optim, "_load_state_dict")


def _scheduler():
    return pyro.optim.ExponentialLR(
        {"optimizer": torch.optim.SGD, "optim_args": {"lr": 0.1}, "gamma": 0.5}
    )


@pytest.mark.parametrize("name", ["state_dict", "step", "get_last_lr", "optimizer"])
def test_a_scheduler_state_that_overwrites_its_methods_is_refused(tmp_path, name):
    # torch's LRScheduler.load_state_dict does __dict__.update: {"state_dict": 0}
    # made every later optim.save() and scheduler.step() raise TypeError.
    path = tmp_path / "scheduler.pt"
    crafted = {name: 0, "last_epoch": 3}
    if NESTED:  # pyro 1.9 saves the scheduler's state beside its optimizer's
        write_file(path, {"loc": {"scheduler": crafted, "optimizer": {}}})
        where = f"state['loc']['scheduler'][{name!r}]"
    else:
        write_file(path, {"loc": crafted})
        where = f"state['loc'][{name!r}]"
    scheduler = _scheduler()
    with pytest.raises(UntrustedContentError) as refused:
        scheduler.load(path)
    assert scheduler._state_waiting_to_be_consumed == {}
    assert refused.value.where == where, refused.value
    assert "ExponentialLR" in str(refused.value)


def test_a_scheduler_state_pyro_saved_loads_into_the_scheduler(tmp_path):
    path = tmp_path / "scheduler.pt"
    scheduler, loc = saved_scheduler(_scheduler, path)
    again = _scheduler()
    again.load(path)
    again([loc])
    live, loaded = scheduler.optim_objs[loc], again.optim_objs[loc]
    assert loaded.state_dict() == live.state_dict()


# ---------------------------------------------------------------------------
# The budget, over the worst files above


def _cats_file(path: Path, params: int, parts: int, *, genuine: bool) -> Path:
    """The attacker's file: ``params`` parameters of ``parts`` bytes, each under a
    _Cat of ``parts`` parts, one byte of pickle or so a part (nothing memoized
    that is not referred to again).  Not ``genuine``: the parts are empty dicts
    and the lengths left out (the broadcast check assumed ``[1] * parts``);
    ``genuine``: constraints.real, with their lengths, as _Cat's constructor sets
    them."""
    small = torch.zeros(1, dtype=torch.uint8)
    base = torch.zeros(parts, dtype=torch.uint8)
    params_, constraints_ = {}, {}
    for index in range(params):
        cat = constraints._Cat.__new__(constraints._Cat)
        first = constraints.greater_than(small)
        if genuine:
            rest: list = [constraints._Real() for _ in range(parts - 1)]
            cat.__dict__.update(cseq=[first, *rest], dim=0, lengths=[1] * parts)
        else:
            cat.__dict__.update(cseq=[{"t": small}] + [{} for _ in range(parts - 1)], dim=0)
        params_[f"p{index}"] = base[:]
        constraints_[f"p{index}"] = cat
    buffer = io.BytesIO()
    torch.save({"params": params_, "constraints": constraints_}, buffer)
    with zipfile.ZipFile(buffer) as saved, zipfile.ZipFile(path, "w") as archive:
        for info in saved.infolist():
            data = saved.read(info)
            archive.writestr(
                info, pickletools.optimize(data) if info.filename.endswith(".pkl") else data
            )
    return path


def _worst_files(tmp_path: Path) -> dict[str, tuple[Path, object]]:
    """Each finding's worst file, at a size a test can afford, and its load."""
    store_load = pyro.get_param_store().load
    optim_load = pyro.optim.Adam({"lr": 0.1}).load
    files = {"long list": (_lists_file(tmp_path / "nones.pt", b"N", 1_000_000), optim_load)}
    path = tmp_path / "records.pt"
    path.write_bytes(_records_zip(loader_archive.MAX_RECORDS + 7, 7))
    files["records"] = (path, store_load)
    for kind in ("cat", "stack"):
        state, data = _sliced(2_000, kind)
        files[kind] = (write_file(tmp_path / f"{kind}.pt", state, data), store_load)
    nested: list = []
    for _ in range(30):
        nested = [nested] * 4
    files["shared nesting"] = (write_file(tmp_path / "nested.pt", {"x": {"n": nested}}), optim_load)
    # The most objects a byte makes: an empty dict (or list) a byte, 9,000 an entry.
    files["empty dicts"] = (_lists_file(tmp_path / "dicts.pt", b"}", 9_000, 30), optim_load)
    files["empty lists"] = (_lists_file(tmp_path / "lists.pt", b"]", 9_000, 30), optim_load)
    # A _Cat of 10,000 one-byte parts a parameter: the broadcast check cached two
    # entries a part (some 150 bytes a byte of the file over the budget).
    for genuine in (False, True):
        path = _cats_file(tmp_path / f"cats{genuine}.pt", 40, 9_990, genuine=genuine)
        files[f"cats, genuine={genuine}"] = (path, store_load)
    return files


def test_every_worst_file_costs_within_the_budget(tmp_path):
    per_byte, constant = loader_checks.BUDGET_MEMORY
    calls_per_byte, calls = loader_checks.BUDGET_CALLS
    for name, (path, load) in _worst_files(tmp_path).items():
        size = path.stat().st_size
        peak, made = _peak_and_calls(lambda load=load, path=path: load(path))
        assert peak <= per_byte * size + constant, (name, size, peak)
        assert made <= calls_per_byte * size + calls, (name, size, made)


# ---------------------------------------------------------------------------
# Item 5: fork during another thread's first load

FORK_DURING_FIRST_LOAD = (
    """
import json, os, signal, sys, threading
import pyro_pickle_fix, pyro, torch
pyro.param("x", torch.ones(2), constraint=torch.distributions.constraints.positive)
pyro.get_param_store().save({path!r})
before = set(sys.modules)
paused, go_on, done = threading.Event(), threading.Event(), threading.Event()

def trace(frame, event, arg):
    # A module body that runs during the load is an import, holding its lock.
    if event == "call" and frame.f_code.co_name == "<module>" and not paused.is_set():
        paused.set()
        go_on.wait(60)
    return None

def first_load():
    sys.settrace(trace)
    try:
        pyro.get_param_store().load({path!r})
    finally:
        sys.settrace(None)
        done.set()

thread = threading.Thread(target=first_load)
thread.start()
while not (paused.is_set() or done.is_set()):
    paused.wait(0.01)
imported = sorted(set(sys.modules) - before)
"""
    + FORK_CHILD
    + """go_on.set()
thread.join(60)
print(json.dumps({{"child": status, "imported": imported}}))
"""
)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
def test_a_fork_during_another_threads_first_load_leaves_a_child_that_loads(tmp_path):
    # The loader was imported at the first load: a child forked while another thread
    # held that import's lock hung on it.  Now nothing is imported by a load.
    found = run_json(FORK_DURING_FIRST_LOAD.format(path=str(tmp_path / "p.pt")), timeout=120)
    assert found == {"child": 0, "imported": []}


# ---------------------------------------------------------------------------
# Issue 31: the zip directory read without zipfile's private functions


@pytest.mark.slow
def test_an_archive_of_more_records_than_16_bits_count_loads_as_torch_loads_it(tmp_path):
    # torch.save writes a zip64 end record past 65,535 records: the loader reads its
    # count and directory there (as it reads every end record, with struct).
    groups = [{"lr": 0.1, "params": [0]}]
    state = {
        f"p{i}": {"state": {0: {"step": torch.tensor(float(i))}}, "param_groups": groups}
        for i in range(66_000)
    }
    path = tmp_path / "many.pt"
    torch.save(state, path)
    assert path.read_bytes().rfind(b"PK\x06\x06") > 0  # a zip64 end record
    optim = pyro.optim.Adam({"lr": 0.1})
    optim.load(path)
    loaded = optim._state_waiting_to_be_consumed
    expected = torch.load(path, weights_only=True)
    assert loaded.keys() == expected.keys()
    for name in ("p0", "p65999"):
        assert loaded[name]["param_groups"] == expected[name]["param_groups"]
        assert torch.equal(loaded[name]["state"][0]["step"], expected[name]["state"][0]["step"])


def test_the_loader_uses_no_private_zipfile_function():
    # It read the record count with zipfile._EndRecData; now it imports no zipfile.
    import ast

    import pyro_pickle_fix.loader

    root = Path(pyro_pickle_fix.loader.__file__).parent
    for module in root.glob("*.py"):
        tree = ast.parse(module.read_text())
        names = {
            alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        }
        names |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert "zipfile" not in names, module
        assert "_EndRecData" not in module.read_text(), module
