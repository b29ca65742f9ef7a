"""Differential fuzzing of the two loads (issue 28, item 3): files pyro wrote,
changed at every layer of torch's format (the pickle's opcodes and arguments, the
zip archive's header fields, the records and the storages' bytes), each loaded
through the public loads with the fix on: ``pyro.get_param_store().load(path)``
and ``PyroOptim.load(path)``.  For every input:

- only the package's errors come out, and a refused file changes nothing;
- the load's memory (``tracemalloc``'s peak) stays within :func:`budget`, a fixed
  multiple of the file's size plus a constant, and its time within
  :data:`TIME_LIMIT` (an alarm far above a normal load's milliseconds);
- a file that loads gives what torch's weights-only unpickler gives for it,
  ``torch.load(path, weights_only=True)`` with ``pyro_pickle_fix.safe_globals()``
  allowed, where torch loads it: the same values (to the byte), dtypes, shapes,
  strides, views of one storage, containers, constraint classes and attributes,
  and objects shared where torch's are.

The seed files are written by pyro itself, afresh in each session.  CI runs a
fixed number of examples (derandomized); more on demand::

    PYRO_PICKLE_FIX_FUZZ_EXAMPLES=100000 python -m pytest -n 0 -q tests/test_fuzz.py

With ``PYRO_PICKLE_FIX_FUZZ_LOG=DIR`` as well, a failing input is written to
``DIR`` (the file and what went wrong) and the run goes on, so that one long run
finds more than its first failure.  Every input a run ever found is a regular test
at the end of this file.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import os
import pickle
import signal
import struct
import threading
import traceback
import tracemalloc
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import mutations
import pyro
import pyro.distributions as dist
import pytest
import torch
from hypothesis import HealthCheck, Phase, event, given, settings
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoDelta
from pyro.nn import PyroModule, PyroParam
from pyro.params.param_store import ParamStoreDict

import pyro_pickle_fix
from pyro_pickle_fix import errors

constraints = torch.distributions.constraints
#: What a load may raise: the package's own refusals (every UnpicklingError that
#: pyro_pickle_fix.errors defines), nothing else.
REFUSALS: tuple[type[BaseException], ...] = tuple(
    cls
    for cls in vars(errors).values()
    if isinstance(cls, type) and issubclass(cls, pickle.UnpicklingError)
)
#: torch's weights-only unpickler with an allowlist of the load's own (torch 2.5+);
#: without it the inputs are still checked for errors, memory and time.
ORACLE = hasattr(torch.serialization, "safe_globals")

#: The budget of one load, whatever the file: this many times its size ...
MEMORY_PER_BYTE = 16
#: ... plus this (tracemalloc's peak, in bytes, of Python's allocations).
MEMORY_CONSTANT = 2 * 2**20
#: Seconds one load may take: a normal load of these files takes milliseconds.
TIME_LIMIT = 20.0

EXAMPLES = int(os.environ.get("PYRO_PICKLE_FIX_FUZZ_EXAMPLES", "0"))
LOG = os.environ.get("PYRO_PICKLE_FIX_FUZZ_LOG")
_CHECKS = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
settings.register_profile(
    "pyro-pickle-fix-fuzz-ci",
    max_examples=300,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=_CHECKS,
    phases=[Phase.explicit, Phase.generate, Phase.shrink],  # (explaining takes a minute)
)
settings.register_profile(
    "pyro-pickle-fix-fuzz-long",
    max_examples=max(EXAMPLES, 1),
    deadline=None,
    suppress_health_check=_CHECKS,
    print_blob=True,
)
FUZZ = settings.get_profile("pyro-pickle-fix-fuzz-long" if EXAMPLES else "pyro-pickle-fix-fuzz-ci")


def budget(size: int) -> int:
    """The most a load of a file of ``size`` bytes may allocate (tracemalloc's peak)."""
    return MEMORY_PER_BYTE * size + MEMORY_CONSTANT


# ---------------------------------------------------------------------------
# The seeds: files pyro wrote


class Seed:
    """A file pyro wrote (its records rewritten in torch's layout by the mutations)."""

    __slots__ = ("kind", "name", "raw")

    def __init__(self, name: str, kind: str, raw: bytes) -> None:
        self.name, self.kind, self.raw = name, kind, raw  # kind: "store" or "optim"

    def __repr__(self) -> str:  # (hypothesis prints it for a failing input)
        return f"<seed {self.name}.pt>"

    @property
    def records(self) -> mutations.Records:
        return mutations.read_archive(self.raw)

    @property
    def ops(self) -> list[mutations.Op]:
        return mutations.parse_pickle(pickle_of(self.records))


def pickle_of(records: mutations.Records) -> bytes:
    return next(payload for name, payload in records if name.endswith("/data.pkl"))


def _store_seed() -> None:
    """Constraints of every kind of attribute: none, a scalar bound, tensor bounds,
    a base constraint; float32 and float64, a 0-dim parameter."""
    pyro.param("scale", torch.ones(3), constraint=constraints.positive)
    box = constraints.interval(torch.zeros(3), torch.ones(3))
    pyro.param("box", torch.full((2, 3), 0.5), constraint=box)
    pyro.param("chol", torch.eye(2), constraint=constraints.lower_cholesky)
    pyro.param("w", torch.full((4,), 0.25, dtype=torch.float64), constraint=constraints.simplex)
    low = constraints.independent(constraints.greater_than(torch.tensor([-1.0, 0.0])), 1)
    pyro.param("low", torch.ones(2), constraint=low)
    pyro.param("t", torch.tensor(0.5), constraint=constraints.unit_interval)
    pyro.param("loc", torch.arange(3.0))


def _plate_seed() -> None:
    """An AutoDelta over a site in a plate: its support's bound saved expanded."""

    def model() -> None:
        with pyro.plate("N", 5):
            pyro.sample("w", dist.Pareto(1.0, 2.0))

    SVI(model, AutoDelta(model), pyro.optim.Adam({"lr": 0.01}), Trace_ELBO()).step()


class _Module(PyroModule):
    def __init__(self) -> None:
        super().__init__()
        bound = constraints.greater_than(torch.tensor([0.5, -1.0]))
        self.a = PyroParam(torch.ones(2), constraint=bound)
        self.linear = PyroModule[torch.nn.Linear](3, 2)

    def forward(self) -> torch.Tensor:
        return self.a.sum() + self.linear.weight.sum()


def _module_seed() -> None:
    _Module()()


def _trained(optim: pyro.optim.PyroOptim, steps: int) -> pyro.optim.PyroOptim:
    """``optim`` after ``steps`` steps of SVI on a small model (and, for a
    scheduler, as many epochs)."""

    def model() -> None:
        loc = pyro.param("loc", torch.zeros(3))
        scale = pyro.param("s", torch.ones(()), constraint=constraints.positive)
        pyro.sample("y", dist.Normal(loc, scale).to_event(1), obs=torch.ones(3))

    svi = SVI(model, lambda: None, optim, Trace_ELBO())
    for _ in range(steps):
        svi.step()
        if hasattr(optim, "step"):
            optim.step()
    return optim


def write_seeds(folder: Path) -> list[Seed]:
    """The seed files, written by pyro into ``folder``; their records."""
    found = []
    pyro.set_rng_seed(0)
    for name, make in (("store", _store_seed), ("plate", _plate_seed), ("module", _module_seed)):
        pyro.clear_param_store()
        make()
        pyro.get_param_store().save(folder / f"{name}.pt")
        found.append(Seed(name, "store", (folder / f"{name}.pt").read_bytes()))
    pyro.clear_param_store()
    scheduler = pyro.optim.ExponentialLR(
        {"optimizer": torch.optim.Adam, "optim_args": {"lr": 0.05}, "gamma": 0.5}
    )
    for name, optim in (("adam", pyro.optim.Adam({"lr": 0.1})), ("scheduler", scheduler)):
        _trained(optim, 2).save(folder / f"{name}.pt")
        found.append(Seed(name, "optim", (folder / f"{name}.pt").read_bytes()))
    pyro.clear_param_store()
    return found


@pytest.fixture(scope="session")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> list[Seed]:
    folder = tmp_path_factory.mktemp("seeds")
    found = write_seeds(folder)
    # What a process imports at its first load (and first refusal) is not the
    # load's: each seed, and a damaged one, loaded once before any is measured.
    for seed in found:
        for raw in (seed.raw, seed.raw[:-1]):
            (folder / "warm.pt").write_bytes(raw)
            with contextlib.suppress(*REFUSALS):
                load_through_fix(seed.kind, folder / "warm.pt", None, measured=False)
    return found


@pytest.fixture(scope="session")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where each input is written to be loaded."""
    return tmp_path_factory.mktemp("inputs") / "input.pt"


# ---------------------------------------------------------------------------
# One input: loaded through the fix, checked, compared with torch


class TooSlow(BaseException):
    """The alarm of :func:`watched` (a BaseException: no ``except Exception`` of the
    loader's may swallow it)."""


@dataclass
class Usage:
    peak: int = 0


@contextmanager
def watched(seconds: float) -> Iterator[Usage]:
    """tracemalloc's peak of the block, which an alarm stops after ``seconds``."""
    usage = Usage()

    def alarm(signum: int, frame: Any) -> None:
        raise TooSlow(f"the load took more than {seconds} s")

    # An alarm needs SIGALRM and the main thread (where pytest and xdist run a test).
    can = hasattr(signal, "SIGALRM") and threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGALRM, alarm) if can else None
    tracemalloc.start()
    try:
        if previous is not None:
            signal.setitimer(signal.ITIMER_REAL, seconds)
        yield usage
    finally:
        if previous is not None:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        usage.peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()


def load_through_fix(
    kind: str, path: Path, map_location: Any, measured: bool = True
) -> tuple[Any, BaseException | None]:
    """What the public load made of ``path`` (the param store's state, or the
    optimizer's state waiting to be consumed), or the refusal; checked against
    the budget, and a refusal against a change."""
    size = path.stat().st_size
    pyro.clear_param_store()
    optim = pyro.optim.Adam({"lr": 0.1})
    refused: BaseException | None = None
    with watched(TIME_LIMIT) as usage:
        try:
            if kind == "store":
                pyro.get_param_store().load(path, map_location=map_location)
            else:
                optim.load(path, map_location=map_location)
        except REFUSALS as error:
            refused = error
    assert usage.peak <= budget(size) or not measured, (
        f"the load took {usage.peak} bytes, more than the budget {budget(size)} for "
        f"{size} bytes (refused: {refused!r})"
    )
    store = pyro.get_param_store()
    if refused is not None:
        assert not store._params and not store._constraints, "a refused load changed the store"
        assert optim._state_waiting_to_be_consumed == {}, "a refused load changed the optimizer"
        return None, refused
    if kind == "store":
        return {"params": dict(store._params), "constraints": dict(store._constraints)}, None
    return dict(optim._state_waiting_to_be_consumed), None


@contextmanager
def torch_weights_only() -> Iterator[None]:
    """torch's weights-only loads with the constraint classes allowed, its warnings
    about what a changed file holds (a pickle protocol, TypedStorage) silenced."""
    with (
        torch.serialization.safe_globals(pyro_pickle_fix.safe_globals()),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore", UserWarning)
        yield


def load_through_torch(kind: str, path: Path, map_location: Any) -> Any:
    """What stock pyro would hold after loading ``path`` with torch's weights-only
    unpickler (the param store through its own ``set_state``); None if torch
    refuses it."""
    try:
        with torch_weights_only():
            state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch's refusal: nothing to compare with
        event(f"the fix loads, torch refuses: {type(error).__name__}")
        if LOG is not None:
            _log(path.read_bytes(), error, "torch-refuses")
        return None
    if kind == "store":
        store = ParamStoreDict()
        store.set_state(state)
        return {"params": dict(store._params), "constraints": dict(store._constraints)}
    return state


def assert_same(ours: Any, theirs: Any, where: str, pairs: dict[int, tuple[Any, Any]]) -> None:
    """``ours`` is what torch made, to the byte, and shares what torch's shares
    (``pairs``: id of each of ours seen -> (it, torch's))."""
    assert type(ours) is type(theirs), f"{where}: {type(ours)} where torch has {type(theirs)}"
    if isinstance(ours, float):
        same = struct.pack("<d", ours) == struct.pack("<d", theirs)
        assert same or (math.isnan(ours) and math.isnan(theirs)), f"{where}: {ours} != {theirs}"
        return
    if ours is None or isinstance(ours, (bool, int, str, bytes)):
        assert ours == theirs, f"{where}: {ours!r} where torch has {theirs!r}"
        return
    if id(ours) in pairs:
        assert pairs[id(ours)][1] is theirs, f"{where}: shared where torch's is not"
        return
    pairs[id(ours)] = (ours, theirs)
    if isinstance(ours, torch.Tensor):
        _assert_same_tensor(ours, theirs, where, pairs)
    elif isinstance(ours, dict):
        assert list(ours) == list(theirs), f"{where}: keys {list(ours)} != {list(theirs)}"
        for key, value in ours.items():
            assert_same(value, theirs[key], f"{where}[{key!r}]", pairs)
    elif isinstance(ours, (list, tuple)):
        assert len(ours) == len(theirs), f"{where}: {len(ours)} items != {len(theirs)}"
        for index, (mine, other) in enumerate(zip(ours, theirs, strict=True)):
            assert_same(mine, other, f"{where}[{index}]", pairs)
    else:  # a constraint
        assert isinstance(ours, constraints.Constraint), f"{where}: {type(ours)}"
        assert_same(vars(ours), vars(theirs), f"{where}.__dict__", pairs)


def _assert_same_tensor(ours: Any, theirs: Any, where: str, pairs: dict[int, Any]) -> None:
    layout = ("dtype", "shape", "device", "requires_grad", "is_leaf")
    for name in layout:
        assert getattr(ours, name) == getattr(theirs, name), f"{where}.{name}"
    assert ours.stride() == theirs.stride(), f"{where}: stride"
    assert ours.storage_offset() == theirs.storage_offset(), f"{where}: offset"
    storage, other = ours.untyped_storage(), theirs.untyped_storage()
    key = ("storage", storage.data_ptr()) if storage.nbytes() else None
    if key is not None:  # views of one storage stay views of one storage
        known = pairs.setdefault(hash(key), (storage, other))
        assert known[1].data_ptr() == other.data_ptr(), f"{where}: shares another storage"

    def raw(tensor_storage: Any) -> torch.Tensor:
        return torch.empty(0, dtype=torch.uint8).set_(tensor_storage)

    assert torch.equal(raw(storage.cpu()), raw(other.cpu())), f"{where}: other bytes"


def check_input(seed: Seed, raw: bytes, path: Path, map_location: Any = None) -> str:
    """Loads ``raw`` (a changed ``seed``) through the fix and holds the rules above;
    what happened, in a word."""
    path.write_bytes(raw)
    try:
        ours, refused = load_through_fix(seed.kind, path, map_location)
        if refused is not None:
            event(f"refused: {type(refused).__name__}")
            if LOG is not None and ORACLE and _torch_loads(path, map_location):
                _log(raw, refused, "torch-loads")
            return "refused"
        theirs = load_through_torch(seed.kind, path, map_location) if ORACLE else None
        if theirs is None:
            return "loaded"
        assert_same(ours, theirs, "state", {})
        event("loaded, as torch loads it")
        return "loaded"
    except (Exception, TooSlow) as failure:
        if LOG is None:
            raise
        _log(raw, failure, "failed")
        event(f"failed: {type(failure).__name__}")
        return "failed"


def _torch_loads(path: Path, map_location: Any) -> bool:
    """Whether torch's weights-only unpickler loads ``path`` (what the fix refuses:
    kept with PYRO_PICKLE_FIX_FUZZ_LOG, to see what it refuses that torch takes)."""
    try:
        with torch_weights_only():
            torch.load(path, map_location=map_location, weights_only=True)
    except Exception:
        return False
    return True


def _log(raw: bytes, failure: BaseException | None, folder_name: str) -> None:
    """With PYRO_PICKLE_FIX_FUZZ_LOG: the input, and what went wrong, kept."""
    if LOG is None:
        return
    folder = Path(LOG) / folder_name
    folder.mkdir(parents=True, exist_ok=True)
    name = hashlib.sha256(raw).hexdigest()[:16]
    (folder / f"{name}.pt").write_bytes(raw)
    if failure is not None:
        (folder / f"{name}.txt").write_text("".join(traceback.format_exception(failure)))


# ---------------------------------------------------------------------------
# The fuzz tests, one per layer


def _draw_seed(data: st.DataObject, seeds: list[Seed]) -> Seed:
    return data.draw(st.sampled_from(seeds), label="seed")


def _map_location(data: st.DataObject) -> Any:
    return data.draw(st.sampled_from([None, "cpu"]), label="map_location")


def archive(records: mutations.Records) -> bytes:
    return mutations.write_archive(records)[0]


@FUZZ
@given(data=st.data())
def test_a_changed_pickle_is_loaded_as_torch_loads_it_or_refused(seeds, scratch, data):
    seed = _draw_seed(data, seeds)
    how = data.draw(st.sampled_from(["arguments", "opcodes", "bytes"]), label="change")
    if how == "arguments":
        changed = mutations.write_pickle(mutations.mutate_arguments(data, seed.ops))
    elif how == "opcodes":
        changed = mutations.write_pickle(mutations.mutate_pickle(data, seed.ops))
    else:
        changed = mutations.mutate_bytes(data, pickle_of(seed.records), "pickle bytes")
    raw = archive(mutations.with_pickle(seed.records, lambda _: changed))
    check_input(seed, raw, scratch, _map_location(data))


@FUZZ
@given(data=st.data())
def test_a_changed_archive_is_loaded_as_torch_loads_it_or_refused(seeds, scratch, data):
    seed = _draw_seed(data, seeds)
    raw, fields = mutations.write_archive(seed.records)
    if data.draw(st.booleans(), label="header fields"):
        raw = mutations.mutate_fields(data, raw, fields)
    else:
        raw = mutations.mutate_bytes(data, raw, "archive bytes")
    check_input(seed, raw, scratch, _map_location(data))


@FUZZ
@given(data=st.data())
def test_changed_records_are_loaded_as_torch_loads_them_or_refused(seeds, scratch, data):
    seed = _draw_seed(data, seeds)
    if data.draw(st.booleans(), label="a storage resized, its declaration alike"):
        raw = archive(mutations.resize_storage(data, seed.records))
    else:
        raw = archive(mutations.mutate_records(data, seed.records))
    check_input(seed, raw, scratch, _map_location(data))


# ---------------------------------------------------------------------------
# The harness itself


def test_the_writer_lays_out_records_as_torch_save_does(seeds):
    """The mutations change torch's own layout: rewritten, each seed is the file pyro
    wrote, byte for byte (where this torch writes the zip64 end record, as torch 2.x
    does), and every header field listed lies in the file; its pickle, rewritten
    from its opcodes, is the pickle pyro wrote."""
    for seed in seeds:
        raw, fields = mutations.write_archive(seed.records)
        assert mutations.read_archive(raw) == seed.records
        if b"PK\x06\x06" in seed.raw:
            assert raw == seed.raw, seed.name
        assert all(offset + width <= len(raw) for offset, width, _ in fields)
        assert mutations.write_pickle(seed.ops) == pickle_of(seed.records)


# ---------------------------------------------------------------------------
# Every input the fuzzing found, as a regular test: a genuine seed changed
# deterministically, to the bytes the fuzzing found


def _seed(seeds: list[Seed], name: str) -> Seed:
    return next(seed for seed in seeds if seed.name == name)


def with_field(seed: Seed, name: str, value: int) -> bytes:
    """``seed`` in torch's layout, with one header field set to ``value``."""
    raw, fields = mutations.write_archive(seed.records)
    return mutations.set_field(raw, fields, name, value)


def refusal(seed: Seed, raw: bytes, path: Path) -> BaseException | None:
    """The fix's refusal of ``raw`` (None if it loads), within the budget; any other
    error is raised."""
    path.write_bytes(raw)
    return load_through_fix(seed.kind, path, None)[1]


@pytest.mark.parametrize("attributes", [0x10, 0x4B9B])
def test_a_record_marked_as_a_directory_is_refused(seeds, tmp_path, attributes):
    """Found by the archive fuzzing: torch (miniz) reads no data into a record whose
    central-directory entry carries the DOS directory attribute (0x10), so
    ``torch.load(weights_only=True)`` hands out the storage's uninitialized memory
    as the parameter's values, where the fix read the record's bytes.  torch.save
    never sets it: the fix refuses the file."""
    raw = with_field(_seed(seeds, "module"), "archive/data/1 central external", attributes)
    refused = refusal(_seed(seeds, "module"), raw, tmp_path / "directory.pt")
    assert isinstance(refused, errors.UntrustedContentError), refused
    assert refused.where == "archive/data/1" and "directory" in str(refused)


#: How a refusal of an archive whose records are not where its end records say
#: reads: the zip64 end record, the central directory or the first record is
#: elsewhere.
SHIFTED = ("where its locator says", "central directory at", "first record at byte")


@pytest.mark.parametrize(
    "change",
    [
        # as found: bytes before the archive (zipfile reads past them, torch.load
        # takes the file for its legacy format and reads something else)
        lambda seed: b"\x07\xbf\xb2\x07~\n" + seed.raw,
        lambda seed: with_field(seed, "zip64 end directory offset", 10**6),
        lambda seed: with_field(seed, "zip64 end directory offset", 2**64 - 1),
    ],
    ids=["bytes before it", "directory offset past the file", "directory offset 2**64-1"],
)
def test_an_archive_whose_records_are_not_where_torch_reads_them_is_refused(
    seeds, tmp_path, change
):
    """Found by the archive fuzzing: zipfile finds the records of an archive whose
    central directory is not where its end record says by the difference, torch
    does not.  With bytes before the first record, the fix loaded the archive that
    torch.load took for its legacy format (a file could hold a legacy pickle for
    torch and an archive for the fix); with an offset past the file the shifted
    offsets escaped as OSError or ValueError from seek()."""
    seed = _seed(seeds, "adam")
    refused = refusal(seed, change(seed), tmp_path / "shifted.pt")
    assert isinstance(refused, errors.UntrustedContentError), refused
    assert any(why in str(refused) for why in SHIFTED), refused


@pytest.mark.skipif(not ORACLE, reason="this torch has no weights-only allowlist to compare with")
def test_a_legacy_file_with_an_archive_after_it_is_refused(seeds, tmp_path):
    """What the finding above allowed: torch.load reads a file that does not start
    with a zip record in its legacy format; zipfile reads the archive appended to
    it.  torch loads the legacy state; the fix loaded the appended store."""
    legacy = io.BytesIO()
    state = {"params": {"x": torch.ones(2)}, "constraints": {"x": constraints.real}}
    torch.save(state, legacy, _use_new_zipfile_serialization=False)
    path = tmp_path / "both.pt"
    path.write_bytes(legacy.getvalue() + _seed(seeds, "store").raw)
    assert list(load_through_torch("store", path, None)["params"]) == ["x"]
    refused = load_through_fix("store", path, None)[1]
    assert isinstance(refused, errors.UntrustedContentError), refused
    assert any(why in str(refused) for why in SHIFTED), refused


#: What the fuzzing found escaping main's loader (zipfile's NotImplementedError, and
#: BadZipFile from the record count's zip64 look-up): (seed, header field, value,
#: whether torch reads it).  The loader reads the directory itself now.
ESCAPED = {
    "a version zipfile cannot read": ("store", "archive/data.pkl central needed", 64, True),
    "an archive that spans disks": ("adam", "locator disks", 2, False),
}


@pytest.mark.parametrize("finding", sorted(ESCAPED))
def test_a_crafted_archive_loads_as_torch_reads_it_or_gets_the_packages_error(
    seeds, tmp_path, finding
):
    name, field, value, torch_reads = ESCAPED[finding]
    seed = _seed(seeds, name)
    refused = refusal(seed, with_field(seed, field, value), tmp_path / "escaped.pt")
    if torch_reads:
        assert refused is None, refused
    else:
        assert isinstance(refused, REFUSALS), refused
