"""Loading you can trust: the param store's load and the optimizer's load go
through the fix's own unpickler, which builds nothing until the whole file has
been checked.  Each finding of issue 23 (a crafted file that still hurt) has a
test here; the real-file round trips show that what pyro writes still loads and
resumes bit-identically.  Each sentence of docs/loading.md about untrusted files is backed
here or in test_roundtrip.py."""

from __future__ import annotations

import io
import os
import pickle
import re
import struct
import threading
import zipfile
import zlib
from pathlib import Path

import pyro
import pytest
import torch
from guides import DATA, global_model
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from support import PYRO, run_json, run_python, stock_error

import pyro_pickle_fix
from pyro_pickle_fix import loader
from pyro_pickle_fix.errors import UntrustedContentError, UntrustedGlobalError
from pyro_pickle_fix.loader import allowed as loader_allowed
from pyro_pickle_fix.loader import archive as loader_archive
from pyro_pickle_fix.loader import checks as loader_checks

TORCH = tuple(int(part) for part in torch.__version__.split("+")[0].split(".")[:3])
ALLOWLIST = hasattr(torch.serialization, "safe_globals")  # torch 2.5+
needs_allowlist = pytest.mark.skipif(
    not ALLOWLIST, reason="this torch has no weights-only allowlist to compare with"
)
constraints = torch.distributions.constraints
ROOT = Path(__file__).resolve().parents[1]
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


def _refused_store(path: Path, error: type = pickle.UnpicklingError) -> pickle.UnpicklingError:
    """The store load of ``path`` is refused with ``error``, and the store is unchanged."""
    pyro.clear_param_store()
    pyro.param("kept", torch.ones(1))
    with pytest.raises(error) as refused:
        pyro.get_param_store().load(path)
    assert list(pyro.get_param_store().keys()) == ["kept"]
    assert "Nothing was loaded" in str(refused.value), refused.value
    return refused.value


def _refused_optim(path: Path, error: type = pickle.UnpicklingError) -> pickle.UnpicklingError:
    optim = pyro.optim.Adam({"lr": 0.1})
    with pytest.raises(error) as refused:
        optim.load(path)
    assert optim._state_waiting_to_be_consumed == {}
    assert "Nothing was loaded" in str(refused.value), refused.value
    return refused.value


# ---------------------------------------------------------------------------
# Crafted files, written by hand: a protocol-2 pickle and torch's zip layout


class G:
    """GLOBAL module name."""

    def __init__(self, dotted: str, name: str | None = None) -> None:
        self.module, self.name = (dotted, name) if name else dotted.rsplit(".", 1)


class Call:
    """REDUCE: ``func(*args)``."""

    def __init__(self, func: object, args: tuple) -> None:
        self.func, self.args = func, args


class New:
    """NEWOBJ ``cls()`` then BUILD ``state`` (how protocol 2 writes an object)."""

    def __init__(self, cls: object, state: dict | None) -> None:
        self.cls, self.state = cls, state


class Pid:
    """BINPERSID: a storage, ``('storage', type, key, location, numel)``."""

    def __init__(self, key: str, numel: int, storage: str = "FloatStorage", location: str = "cpu"):
        self.pid = ("storage", G(f"torch.{storage}"), key, location, numel)


def dumps(obj: object) -> bytes:
    """``obj`` as pickle protocol 2, each container and record memoized (so that a
    shared object is written once and referred to after)."""
    out = bytearray(b"\x80\x02")
    memo: dict[int, int] = {}
    keep: list[object] = []

    def put(value: object) -> None:
        memo[id(value)] = len(memo)
        keep.append(value)
        out.extend(b"r" + struct.pack("<I", memo[id(value)]))

    def write(value: object) -> None:
        if id(value) in memo:
            out.extend(b"j" + struct.pack("<I", memo[id(value)]))
        elif value is None:
            out.extend(b"N")
        elif value is True or value is False:
            out.extend(b"\x88" if value else b"\x89")
        elif isinstance(value, int):
            if 0 <= value < 256:
                out.extend(b"K" + bytes([value]))
            elif -(2**31) <= value < 2**31:
                out.extend(b"J" + struct.pack("<i", value))
            else:
                raw = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
                out.extend(b"\x8a" + bytes([len(raw)]) + raw)
        elif isinstance(value, float):
            out.extend(b"G" + struct.pack(">d", value))
        elif isinstance(value, str):
            raw = value.encode()
            out.extend(b"X" + struct.pack("<I", len(raw)) + raw)
        elif isinstance(value, tuple):
            if not value:
                out.extend(b")")
                return
            out.extend(b"(")
            for item in value:
                write(item)
            out.extend(b"t")
            put(value)
        elif isinstance(value, list):
            out.extend(b"]")
            put(value)
            for item in value:
                write(item)
                out.extend(b"a")
        elif isinstance(value, dict):
            out.extend(b"}")
            put(value)
            for key, item in value.items():
                write(key)
                write(item)
                out.extend(b"s")
        elif isinstance(value, G):
            out.extend(b"c" + f"{value.module}\n{value.name}\n".encode())
        elif isinstance(value, Call):
            write(value.func)
            write(value.args)
            out.extend(b"R")
            put(value)
        elif isinstance(value, New):
            write(value.cls)
            out.extend(b")\x81")
            put(value)
            if value.state is not None:
                write(value.state)
                out.extend(b"b")
        elif isinstance(value, Pid):
            write(value.pid)
            out.extend(b"Q")
        else:
            raise TypeError(value)

    write(obj)
    out.extend(b".")
    return bytes(out)


def tensor(
    key: str,
    numel: int,
    size: tuple[int, ...],
    stride: tuple[int, ...] | None = None,
    *,
    storage: str = "FloatStorage",
    location: str = "cpu",
    parameter: bool = False,
) -> Call:
    """``_rebuild_tensor_v2`` over storage ``key``, as torch.save writes a tensor."""
    if stride is None:
        stride, step = [], 1
        for extent in reversed(size):
            stride.insert(0, step)
            step *= extent
        stride = tuple(stride)
    hooks = Call(G("collections.OrderedDict"), ())
    built = Call(
        G("torch._utils._rebuild_tensor_v2"),
        (Pid(key, numel, storage, location), 0, size, stride, False, hooks),
    )
    if parameter:
        return Call(G("torch._utils._rebuild_parameter"), (built, True, hooks))
    return built


def write_file(
    path: Path,
    state: object,
    data: dict[str, bytes] | None = None,
    *,
    deflated: bool = False,
) -> Path:
    """A zip as torch.save lays it out: ``archive/data.pkl``, ``archive/data/<key>``,
    ``archive/byteorder``, ``archive/version``."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", dumps(state))
        archive.writestr("archive/byteorder", "little")
        for key, raw in (data or {}).items():
            method = zipfile.ZIP_DEFLATED if deflated else zipfile.ZIP_STORED
            archive.writestr(f"archive/data/{key}", raw, compress_type=method)
        archive.writestr("archive/version", "3\n")
    return path


def floats(*values: float) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)


def store(params: dict, constraints_: dict | None = None) -> dict:
    """A param-store state; each parameter constrained to the reals unless told."""
    if constraints_ is None:
        constraints_ = {
            name: constraints.real if isinstance(value, torch.Tensor) else REAL
            for name, value in params.items()
        }
    return {"params": params, "constraints": constraints_}


REAL = New(G("torch.distributions.constraints._Real"), None)


# ---------------------------------------------------------------------------
# What pyro writes still loads: the real-file round trips


OPTIMIZERS = {
    "Adam": lambda: pyro.optim.Adam({"lr": 0.05}),
    "ExponentialLR": lambda: pyro.optim.ExponentialLR(
        {"optimizer": torch.optim.Adam, "optim_args": {"lr": 0.05}, "gamma": 0.5}
    ),
}


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


def test_a_store_loads_exactly_what_stock_torch_loads(tmp_path):
    shared = constraints.independent(constraints.positive, 1)
    base = torch.arange(12.0).reshape(4, 3)
    pyro.param("a", base[0].exp(), constraint=shared)
    pyro.param("b", torch.ones(2, 3), constraint=shared)
    pyro.param("c", torch.tensor(0.5), constraint=constraints.interval(torch.zeros(()), 2.0))
    pyro.param("d", torch.zeros(3, 3) + torch.eye(3), constraint=constraints.lower_cholesky)
    pyro.param("e", torch.ones(2, dtype=torch.float64))
    path = tmp_path / "p.pt"
    pyro.get_param_store().save(path)
    expected = torch.load(path, weights_only=False)
    pyro.clear_param_store()
    state = loader.load_state(path)
    assert state["params"].keys() == expected["params"].keys()
    for name, value in expected["params"].items():
        got = state["params"][name]
        assert type(got) is type(value) and got.dtype == value.dtype, name
        assert torch.equal(got, value) and got.requires_grad == value.requires_grad, name
    assert {k: repr(v) for k, v in state["constraints"].items()} == {
        k: repr(v) for k, v in expected["constraints"].items()
    }
    # One object shared by two parameters stays one object.
    assert state["constraints"]["a"] is state["constraints"]["b"]


def test_views_of_one_storage_stay_views_and_map_location_is_honoured(tmp_path):
    base = torch.arange(12.0).reshape(4, 3)
    path = tmp_path / "views.pt"
    torch.save({"x": {"state": {0: {"a": base[0], "b": base[1:3]}}, "param_groups": []}}, path)
    seen = []

    def map_location(storage, location):
        seen.append(location)
        return storage

    for where in (None, "cpu", torch.device("cpu"), {"cpu": "cpu"}, map_location):
        state = loader.load_optim_state(path, map_location=where)["x"]["state"][0]
        assert torch.equal(state["a"], base[0]) and torch.equal(state["b"], base[1:3])
        assert state["a"].untyped_storage().data_ptr() == state["b"].untyped_storage().data_ptr()
    assert seen == ["cpu"]  # one storage, restored once


# ---------------------------------------------------------------------------
# Finding: an out-of-bounds write (a sparse parameter whose index is 2**40)


def test_a_sparse_parameter_is_refused_before_it_is_built(tmp_path):
    path = tmp_path / "sparse.pt"
    sparse = torch.sparse_coo_tensor(
        torch.tensor([[2**40]]), torch.tensor([1.0]), (3,), check_invariants=False
    )
    torch.save(store({"x": sparse}, {"x": constraints.real}), path)
    refused = _refused_store(path, UntrustedGlobalError)
    assert refused.name == "torch._utils._rebuild_sparse_tensor"
    assert "a kind of tensor that pyro's files never hold" in str(refused)
    assert "add_safe_globals" not in str(refused)


# ---------------------------------------------------------------------------
# Findings: tensors whose data is not in the file; freed memory handed out


@pytest.mark.parametrize("kind", ["store", "optimizer"])
def test_an_uninitialised_tensor_is_refused(tmp_path, kind):
    # torch.Tensor(n): n elements of whatever memory the process had freed.
    path = tmp_path / "uninitialised.pt"
    empty = [Call(G("torch.Tensor"), (256,)) for _ in range(64)]
    if kind == "store":
        write_file(path, store({f"p{i}": t for i, t in enumerate(empty)}))
        refused = _refused_store(path, UntrustedGlobalError)
    else:
        write_file(path, {"x": {"state": {0: {"exp_avg": empty[0]}}, "param_groups": []}})
        refused = _refused_optim(path, UntrustedGlobalError)
    assert refused.name == "torch.Tensor"


def test_a_meta_tensor_is_refused(tmp_path):
    path = tmp_path / "meta.pt"
    torch.save(store({"x": torch.empty(10**6, device="meta")}), path)
    refused = _refused_store(path, UntrustedGlobalError)
    assert refused.name == "torch._utils._rebuild_meta_tensor_no_storage"
    # Nor a storage on the meta device (no data in the file either).
    write_file(path, store({"x": tensor("0", 10**12, (10**12,), location="meta")}), {"0": b""})
    assert "device 'meta'" in str(_refused_store(path, UntrustedContentError))


def test_a_legacy_format_file_is_refused(tmp_path):
    path = tmp_path / "legacy.pt"
    torch.save(store({"x": torch.ones(2)}), path, _use_new_zipfile_serialization=False)
    refused = _refused_store(path, UntrustedContentError)
    assert "is in torch's legacy format" in str(refused)


@pytest.mark.parametrize(
    ("declared", "held", "message"),
    [
        (10**8, floats(1.0), "declares storage '0' as 100000000 x torch.float32"),
        (1, b"", "declares storage '0' as 1 x torch.float32 (4 bytes), but its record holds 0"),
        (1, None, "which has no record 'data/0' in the file"),
    ],
)
def test_a_storage_unlike_its_record_is_refused(tmp_path, declared, held, message):
    path = tmp_path / "storage.pt"
    data = {} if held is None else {"0": held}
    write_file(path, store({"x": tensor("0", declared, (declared,))}), data)
    assert message in str(_refused_store(path, UntrustedContentError))


def test_a_tensor_larger_than_its_storage_is_refused(tmp_path):
    path = tmp_path / "larger.pt"
    write_file(path, store({"x": tensor("0", 1, (10**8,), (1,))}), {"0": floats(1.0)})
    refused = _refused_store(path, UntrustedContentError)
    assert refused.where == "params['x']"
    assert "needs data the file does not hold" in str(refused)


# ---------------------------------------------------------------------------
# Finding: stride 0 through a rebuild function


def test_an_empty_tensor_with_huge_other_dimensions_is_refused(tmp_path):
    # 0 elements, within its (empty) data; but simplex's transform pads the last
    # dimension to 1: pyro.param() would make 2**32 elements (16 GiB).
    path = tmp_path / "empty.pt"
    big = tensor("0", 0, (2**16, 2**16, 0), (2**16, 1, 1))
    simplex = New(G("torch.distributions.constraints._Simplex"), {})
    write_file(path, store({"x": big}, {"x": simplex}), {"0": b""})
    refused = _refused_store(path, UntrustedContentError)
    assert refused.where == "params['x']"
    assert "is an empty tensor of size (65536, 65536, 0)" in str(refused)
    pyro.clear_param_store()
    pyro.param("e", torch.ones(3, 0), constraint=constraints.positive)
    pyro.get_param_store().save(path)
    pyro.clear_param_store()
    pyro.get_param_store().load(path)
    assert pyro.param("e").shape == (3, 0)


def test_an_expanded_view_through_a_device_rebuild_is_refused(tmp_path):
    path = tmp_path / "device.pt"
    expanded = tensor("0", 1, (10**6,), (0,))
    moved = Call(
        G("torch._utils._rebuild_device_tensor_from_cpu_tensor"),
        (expanded, G("torch.float64"), "cpu", False),
    )
    write_file(path, store({"x": moved}), {"0": floats(1.0)})
    refused = _refused_store(path, UntrustedGlobalError)
    assert refused.name == "torch._utils._rebuild_device_tensor_from_cpu_tensor"
    # And the expanded view on its own: as torch writes it, but a parameter that
    # repeats one value 10**6 times costs what 4 MB would, from a file of 1 KB.
    write_file(path, store({"x": expanded}), {"0": floats(1.0)})
    refused = _refused_store(path, UntrustedContentError)
    assert refused.where == "params" and "4000000 bytes of tensors" in str(refused)


# ---------------------------------------------------------------------------
# Finding: zip bombs


def test_a_compressed_record_is_refused_before_it_is_inflated(tmp_path):
    path = tmp_path / "bomb.pt"
    zeros = bytes(4 * 10**6)  # 4 MB of zeros deflate to 4 KB
    write_file(path, store({"x": tensor("0", 10**6, (10**6,))}), {"0": zeros}, deflated=True)
    assert path.stat().st_size < 20_000
    refused = _refused_store(path, UntrustedContentError)
    assert refused.where == "archive/data/0" and "is stored compressed" in str(refused)


def _with_central_entry(raw: bytes, name: str, change) -> bytes:
    """``raw`` with the central-directory entry of record ``name`` changed."""
    raw = bytearray(raw)
    at = 0
    while (at := raw.find(b"PK\x01\x02", at + 1)) >= 0:
        (length,) = struct.unpack_from("<H", raw, at + 28)
        if raw[at + 46 : at + 46 + length] == name.encode():
            change(raw, at)
            return bytes(raw)
    raise LookupError(name)


def test_a_record_that_claims_more_than_the_file_holds_is_refused(tmp_path):
    path = write_file(tmp_path / "ok.pt", store({"x": tensor("0", 2, (2,))}), {"0": floats(1, 2)})

    def claim(raw: bytearray, at: int) -> None:  # compressed and uncompressed size: 1 GB
        struct.pack_into("<II", raw, at + 20, 2**30, 2**30)

    path.write_bytes(_with_central_entry(path.read_bytes(), "archive/data/0", claim))
    refused = _refused_store(path, UntrustedContentError)
    assert refused.where == "archive/data/0"
    assert "claims 1073741824 bytes that the file does not hold" in str(refused)


def _local_header(name: str, payload: bytes) -> bytes:
    crc = zlib.crc32(payload)
    return (
        struct.pack(
            "<4s5H3L2H",
            b"PK\x03\x04",
            20,
            0,
            0,
            0,
            0,
            crc,
            len(payload),
            len(payload),
            len(name),
            0,
        )
        + name.encode()
    )


def _central_entry(name: str, payload: bytes, offset: int) -> bytes:
    crc = zlib.crc32(payload)
    return (
        struct.pack(
            "<4s6H3L5H2L",
            b"PK\x01\x02",
            20,
            20,
            0,
            0,
            0,
            0,
            crc,
            len(payload),
            len(payload),
            len(name),
            0,
            0,
            0,
            0,
            0,
            offset,
        )
        + name.encode()
    )


def raw_zip(members: list[tuple[str, bytes]], inner: tuple[str, bytes, str] | None = None) -> bytes:
    """A stored zip written byte by byte; ``inner`` = (name, payload, outer name): a
    record whose local header lies inside the payload of record ``outer name``."""
    out, central, offsets = bytearray(), bytearray(), {}
    for name, payload in members:
        offsets[name] = len(out)
        out += _local_header(name, payload) + payload
        central += _central_entry(name, payload, offsets[name])
    count = len(members)
    if inner is not None:
        name, payload, outer = inner
        central += _central_entry(name, payload, offsets[outer] + 30 + len(outer))
        count += 1
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, count, count, len(central), len(out), 0)
    return bytes(out + central + end)


def test_an_archive_of_too_many_records_is_refused_before_its_directory_is_read(
    tmp_path, monkeypatch
):
    # 300,000 empty records (28 MB) took 4.6 s and 236 MB to load; torch.save writes
    # one a storage and a few more.  (Here with a bound of 1,000, not 131,072.)
    assert loader_archive.MAX_RECORDS == 2**17
    monkeypatch.setattr(loader_archive, "MAX_RECORDS", 1_000)
    members = [("archive/data.pkl", dumps(store({}))), ("archive/byteorder", b"little")]
    members += [(f"archive/data/{i}", b"") for i in range(999)]
    path = tmp_path / "records.pt"
    path.write_bytes(raw_zip(members))
    refused = _refused_store(path, UntrustedContentError)
    assert "is an archive of more than 1000 records" in str(refused)
    path.write_bytes(raw_zip(members[:-1]))
    pyro.get_param_store().load(path)


def test_records_nested_inside_another_are_refused(tmp_path):
    # Record 1 lies inside record 0's bytes: the file's data is declared twice.
    data1 = floats(*range(1000))
    data0 = _local_header("archive/data/1", data1) + data1
    state = store(
        {"x": tensor("0", len(data0) // 4, (len(data0) // 4,)), "y": tensor("1", 1000, (1000,))}
    )
    members = [
        ("archive/data.pkl", dumps(state)),
        ("archive/byteorder", b"little"),
        ("archive/data/0", data0),
        ("archive/version", b"3\n"),
    ]
    path = tmp_path / "nested.pt"
    path.write_bytes(raw_zip(members, ("archive/data/1", data1, "archive/data/0")))
    assert sorted(zipfile.ZipFile(path).namelist())[2:4] == ["archive/data/0", "archive/data/1"]
    refused = _refused_store(path, UntrustedContentError)
    assert refused.where == "archive/data/0" and "overlaps the record after it" in str(refused)


# ---------------------------------------------------------------------------
# Finding: allocations inside the load


def test_a_bytearray_in_an_optimizer_file_is_refused(tmp_path):
    path = tmp_path / "bytearray.pt"
    big = Call(G("builtins.bytearray"), (50_000_000,))
    write_file(path, {"x": {"state": {}, "param_groups": [{"lr": 0.1, "x": big}]}})
    refused = _refused_optim(path, UntrustedGlobalError)
    assert refused.name == "builtins.bytearray"


def test_a_constraint_called_with_arguments_is_refused(tmp_path):
    # _Cat([], 0, lengths=<an expanded view>): list() of it makes one tensor per element.
    path = tmp_path / "cat.pt"
    lengths = tensor("0", 1, (30_000,), (0,))
    cat = Call(G("torch.distributions.constraints._Cat"), ([], 0, lengths))
    write_file(
        path, store({"x": tensor("1", 1, (1,))}, {"x": cat}), {"0": floats(1), "1": floats(1)}
    )
    refused = _refused_store(path, UntrustedContentError)
    assert "calls torch.distributions.constraints._Cat with 3 arguments" in str(refused)


# ---------------------------------------------------------------------------
# Findings: depth through sharing; exponential expansion


def _chain(base: object, levels: int) -> object:
    for _ in range(levels):
        base = constraints.independent(base, 0)
    return base


def test_depth_through_shared_segments_is_counted_along_every_path(tmp_path):
    # Each segment is 20 deep and checked once; the last constraint is 100 deep.
    segments = [_chain(constraints.positive, 20)]
    for _ in range(4):
        segments.append(_chain(segments[-1], 20))
    params = {f"x{i}": torch.ones(1) for i in range(5)}
    path = tmp_path / "deep.pt"
    torch.save(store(params, {f"x{i}": s for i, s in enumerate(segments)}), path)
    refused = _refused_store(path, UntrustedContentError)
    assert "nested more than 32 levels deep" in str(refused)
    assert refused.where.startswith("constraints['x1']")


def test_an_exponentially_shared_optimizer_state_is_refused(tmp_path):
    nested: list = []
    for _ in range(18):
        nested = [nested, nested]
    path = tmp_path / "exp_optim.pt"
    torch.save({"x": {"state": {}, "param_groups": [{"lr": 0.1, "n": nested}]}}, path)
    assert path.stat().st_size < 4096
    refused = _refused_optim(path, UntrustedContentError)
    assert "expands to more than 10000 objects" in str(refused)


def test_an_exponentially_shared_constraint_is_refused(tmp_path):
    cat = constraints.positive
    for _ in range(10):
        cat = constraints.cat([cat, cat, cat], 0, [1, 1, 1])
    path = tmp_path / "exp_store.pt"
    torch.save(store({"x": torch.ones(3**10)}, {"x": cat}), path)
    refused = _refused_store(path, UntrustedContentError)
    assert refused.where.startswith("constraints['x']")
    assert "expands to more than 10000 objects" in str(refused)


@pytest.mark.parametrize("key", [2**61 - 1, 2 * (2**61 - 1), -1, 2_000_000, 0.5])
def test_a_dict_key_that_could_collide_is_refused(tmp_path, key):
    # Every multiple of 2**61 - 1 hashes to 0: a dict of them costs quadratic time.
    # An int key is an index from 0 to 1,999,999, and no key is a float.
    path = tmp_path / "collide.pt"
    state = {"x": {"state": {key: {}, 3 * (2**61 - 1) if key != 0.5 else 1.5: {}}}}
    write_file(path, state)
    refused = _refused_optim(path, UntrustedContentError)
    assert "dict key" in str(refused), refused
    write_file(path, {"x": {"state": {0: {}, 1_999_999: {}}, "param_groups": []}})
    assert pyro.optim.Adam({"lr": 0.1}).load(path) is None


def test_a_tensor_referred_to_many_times_in_an_optimizer_state_is_refused(tmp_path):
    # torch's Optimizer.load_state_dict casts each reference separately: 100 copies of
    # 8 KB from an 8 KB file (9,990 of 8 MB made 40 GB at the first step).
    path = tmp_path / "copies.pt"
    big = tensor("0", 1000, (1000,), storage="DoubleStorage")
    state = {"exp_avg": big, "exp_avg_sq": big, "junk": [big] * 100}
    write_file(path, {"x": {"state": {0: state}, "param_groups": []}}, {"0": bytes(8000)})
    refused = _refused_optim(path, UntrustedContentError)
    assert "refers to 816000 bytes of tensors" in str(refused), refused
    state["junk"] = []
    write_file(path, {"x": {"state": {0: state}, "param_groups": []}}, {"0": bytes(8000)})
    pyro.optim.Adam({"lr": 0.1}).load(path)


def test_a_cycle_is_refused(tmp_path):
    constraint = constraints.independent(constraints.positive, 1)
    constraint.base_constraint = constraint
    path = tmp_path / "cycle.pt"
    torch.save(store({"x": torch.ones(2)}, {"x": constraint}), path)
    refused = _refused_store(path, UntrustedContentError)
    assert refused.where == "constraints['x'].base_constraint"
    cyclic: list = []
    cyclic.append(cyclic)
    torch.save({"x": {"state": {}, "param_groups": [{"c": cyclic}]}}, path)
    assert "a cycle" in str(_refused_optim(path, UntrustedContentError))


# ---------------------------------------------------------------------------
# Finding: bounds that broadcast past the parameter


def test_a_parameter_without_a_constraint_is_refused(tmp_path):
    # pyro writes a constraint for every parameter; without one, the file's value
    # would load under whatever constraint the store had for that name.
    path = tmp_path / "unconstrained.pt"
    write_file(path, store({"scale": tensor("0", 1, ())}, {}), {"0": floats(2.0)})
    refused = _refused_store(path, UntrustedContentError)
    assert refused.where == "params['scale']"
    assert "has no constraint" in str(refused)


def test_bounds_that_broadcast_past_the_parameter_are_refused(tmp_path):
    interval = constraints.interval(torch.zeros(30, 1, 1), torch.ones(1, 30, 1))
    path = tmp_path / "broadcast.pt"
    torch.save(store({"x": torch.full((1, 1, 30), 0.5)}, {"x": interval}), path)
    refused = _refused_store(path, UntrustedContentError)
    assert refused.where == "constraints['x']"
    assert "broadcast together they make 27000 elements from 90 in the file" in str(refused)


def _many_tensors(count: int) -> list:
    """``count`` distinct rank-64 tensors over one element (one storage, one size)."""
    size, hooks, pid = (1,) * 64, Call(G("collections.OrderedDict"), ()), Pid("0", 1)
    rebuild = G("torch._utils._rebuild_tensor_v2")
    return [Call(rebuild, (pid, 0, size, (0,) * 64, False, hooks)) for _ in range(count)]


def test_the_broadcast_check_looks_into_each_constraint_once(tmp_path, monkeypatch):
    # One constraint of 1,000 rank-64 tensors shared by 200 parameters: it was
    # compared with each parameter tensor by tensor (9,990 x 199: 27.6 s).
    import time

    bound = New(G("torch.distributions.constraints._GreaterThan"), {"lower_bound": 0})
    bound.state["lower_bound"] = _many_tensors(1_000)
    param = tensor("0", 1, (1,) * 64, (0,) * 64)
    names = [f"p{i}" for i in range(200)]
    path = tmp_path / "fits.pt"
    write_file(path, store({n: param for n in names}, {n: bound for n in names}), {"0": floats(1)})
    start = time.perf_counter()
    state = loader.load_state(path)
    assert time.perf_counter() - start < 2.0  # the old check: some 5 s
    assert len(state["params"]) == 200
    # 200 distinct constraints that share those tensors: the work is counted (here
    # against a bound of 200,000 steps; the real one, 2,000,000, takes under 1 s).
    assert loader_checks.MAX_FITS_WORK == 2_000_000
    monkeypatch.setattr(loader_checks, "MAX_FITS_WORK", 200_000)
    wrapped = {
        n: New(
            G("torch.distributions.constraints._IndependentConstraint"),
            {"base_constraint": bound, "reinterpreted_batch_ndims": 0},
        )
        for n in names
    }
    write_file(path, store({n: param for n in names}, wrapped), {"0": floats(1)})
    refused = _refused_store(path, UntrustedContentError)
    assert "more than 200000 steps to compare with their parameters" in str(refused)


def test_bounds_within_the_parameter_and_a_coalescent_constraint_load(tmp_path):
    from pyro.distributions.coalescent import CoalescentTimesConstraint

    leaf_times = torch.arange(5.0)  # one more than the parameter has: it holds the gaps
    pyro.param("b", torch.full((2, 3), 0.5), constraint=constraints.interval(torch.zeros(3), 1.0))
    state = pyro.get_param_store().get_state()
    state["params"]["t"] = torch.arange(4.0) + 10
    state["constraints"]["t"] = CoalescentTimesConstraint(leaf_times)
    path = tmp_path / "bounds.pt"
    torch.save(state, path)
    pyro.clear_param_store()
    pyro.get_param_store().load(path)
    assert torch.equal(pyro.get_param_store()._constraints["t"].leaf_times, leaf_times)
    assert torch.allclose(pyro.param("b").detach(), torch.full((2, 3), 0.5))


# ---------------------------------------------------------------------------
# Finding: shadowed methods; attributes the constructor does not set


@pytest.mark.parametrize(
    "attribute", ["__reduce_ex__", "check", "event_dim", "not_set_by_the_constructor"]
)
def test_a_constraint_attribute_its_constructor_does_not_set_is_refused(tmp_path, attribute):
    path = tmp_path / "shadow.pt"
    shadow = New(
        G("torch.distributions.constraints._GreaterThan"),
        {"lower_bound": 0.0, attribute: tensor("0", 1, (1,))},
    )
    write_file(
        path, store({"x": tensor("1", 1, (1,))}, {"x": shadow}), {"0": floats(1), "1": floats(1)}
    )
    refused = _refused_store(path, UntrustedContentError)
    assert refused.where == "constraints['x']"
    assert f"an attribute {attribute!r}, which its constructor does not set" in str(refused)
    assert "(it sets ['lower_bound'])" in str(refused)


# ---------------------------------------------------------------------------
# Findings: the per-thread allowlist leaked (interrupts, nested loads); fork


def _torchs_allowlist() -> object:
    import torch._weights_only_unpickler as unpickler

    return unpickler._get_user_allowed_globals


@needs_allowlist
def test_a_weights_only_load_inside_ours_gets_torchs_allowlist_only(tmp_path):
    store_path, checkpoint = _store_file(tmp_path / "p.pt"), _checkpoint(tmp_path / "c.pt")
    torchs = _torchs_allowlist()
    before = set(torch.serialization.get_safe_globals())
    seen = []

    def map_location(storage, location):  # runs during the load, as a hook would
        seen.append((_torchs_allowlist() is torchs, set(torch.serialization.get_safe_globals())))
        try:
            torch.load(checkpoint, weights_only=True)
            seen.append("the nested load got the constraint classes")
        except pickle.UnpicklingError:
            seen.append("refused")
        return storage

    pyro.get_param_store().load(store_path, map_location=map_location)
    assert seen and all(entry == (True, before) or entry == "refused" for entry in seen), seen
    assert sorted(pyro.get_param_store().keys()) == ["loc", "scale", "unit"]


@needs_allowlist
def test_an_interrupt_at_any_call_of_a_load_leaves_torchs_allowlist_as_it_was(tmp_path):
    import sys

    store_path, checkpoint = _store_file(tmp_path / "p.pt"), _checkpoint(tmp_path / "c.pt")
    torchs, before = _torchs_allowlist(), set(torch.serialization.get_safe_globals())
    stages = _loader_files()
    interrupted = 0
    for target in range(1, 100_000):
        calls = 0

        def trace(frame, event, arg, target=target):
            nonlocal calls
            if event == "call" and frame.f_code.co_filename in stages:
                calls += 1
                if calls == target:
                    raise KeyboardInterrupt
            return None

        sys.settrace(trace)
        try:
            pyro.get_param_store().load(store_path)
        except KeyboardInterrupt:
            interrupted += 1
        else:
            break  # the load made fewer calls: every one of them was interrupted once
        finally:
            sys.settrace(None)
        assert _torchs_allowlist() is torchs, target
        assert set(torch.serialization.get_safe_globals()) == before, target
        with pytest.raises(pickle.UnpicklingError):
            torch.load(checkpoint, weights_only=True)
    assert interrupted > 10
    assert sorted(pyro.get_param_store().keys()) == ["loc", "scale", "unit"]


#: A child forked now loads the file at {path} and exits 0 if it has "x" (a hang on
#: a lock: SIGALRM); the parent has its status.
FORK_CHILD = """
pid = os.fork()
if pid == 0:
    signal.alarm(20)  # a hang ends the child with SIGALRM
    pyro.clear_param_store()
    pyro.get_param_store().load({path!r})
    os._exit(0 if "x" in pyro.get_param_store() else 3)
_, status = os.waitpid(pid, 0)
"""

FORK = (
    """
import json, os, signal, sys, threading, _thread
import pyro, torch, pyro_pickle_fix
import pyro_pickle_fix.loader
pyro.param("x", torch.ones(2), constraint=torch.distributions.constraints.positive)
pyro.get_param_store().save({path!r})
stages = [m for n, m in sys.modules.items() if n.startswith("pyro_pickle_fix.loader")]
files = {{m.__file__ for m in stages}}
kinds = (_thread.LockType, type(threading.RLock()))
locks = [v for m in stages for v in vars(m).values() if isinstance(v, kinds)]
paused, go_on = threading.Event(), threading.Event()

def trace(frame, event, arg):
    if frame.f_code.co_filename in files and not paused.is_set():
        if not locks or any(lock.locked() for lock in locks if hasattr(lock, "locked")):
            paused.set()
            go_on.wait(60)
    return trace

def other():
    sys.settrace(trace)
    pyro.get_param_store().load({path!r})

thread = threading.Thread(target=other)
thread.start()
assert paused.wait(60), "the other thread never loaded"
"""
    + FORK_CHILD
    + """go_on.set()
thread.join(60)
print(json.dumps({{"child": status, "locks": len(locks)}}))
"""
)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
def test_a_process_forked_during_another_threads_load_can_load(tmp_path):
    found = run_json(FORK.format(path=str(tmp_path / "p.pt")), fix=True, timeout=120)
    assert found == {"child": 0, "locks": 0}


# ---------------------------------------------------------------------------
# Finding: messages that mislead


def test_a_name_that_is_not_a_class_gets_no_advice_to_allow_it(tmp_path):
    path = tmp_path / "name.pt"
    odd = New(G("torch.distributions.constraints", "_Real x"), None)
    write_file(path, store({"x": tensor("0", 1, (1,))}, {"x": odd}), {"0": floats(1)})
    refused = _refused_store(path, UntrustedGlobalError)
    assert refused.name == "torch.distributions.constraints._Real x"
    assert "'torch.distributions.constraints._Real x'" in str(refused)
    assert "add_safe_globals" not in str(refused)


@pytest.mark.parametrize("name", ["posix.system", "builtins.eval", "os.system"])
def test_a_code_running_global_gets_no_advice_to_allow_it(tmp_path, name):
    path = tmp_path / "evil.pt"
    write_file(path, store({}, {"x": Call(G(name), ("touch ran",))}))
    refused = _refused_store(path, UntrustedGlobalError)
    assert refused.name == name
    assert "could run code named in the file" in str(refused)
    assert "add_safe_globals" not in str(refused)
    assert "set_state(torch.load(path, weights_only=False))" in str(refused)


@pytest.mark.parametrize(
    "name",
    [
        "torch.nn.parameter._disabled_torch_function_impl",
        "torch.nn.parameter._ParameterMeta",
        "torch.Tensor._make_subclass",
        "torch._utils._rebuild_from_type_v2",
    ],
)
def test_a_code_running_global_named_like_a_tensor_is_not_called_a_tensor(tmp_path, name):
    # _disabled_torch_function_impl(func, types, args, kwargs) calls func(*args).
    path = tmp_path / "evil.pt"
    write_file(path, store({"x": Call(G(name), ())}))
    refused = _refused_store(path, UntrustedGlobalError)
    assert "could run code named in the file" in str(refused)
    assert "kind of tensor" not in str(refused)


@pytest.mark.parametrize(
    "name",
    ["torch.distributions.constraints.greater_than", "pyro.distributions.constraints.interval"],
)
def test_an_allowed_class_under_another_name_gets_no_advice_to_allow_it(tmp_path, name):
    # Allowing the class cannot help: it is allowed, under the name pyro writes.
    path = tmp_path / "alias.pt"
    alias = New(G(name), {"lower_bound": 0.0})
    write_file(path, store({"x": tensor("0", 1, (1,))}, {"x": alias}), {"0": floats(1)})
    refused = _refused_store(path, UntrustedGlobalError)
    assert "add_safe_globals" not in str(refused).split("If you trust")[0]
    assert "under a name pyro never writes" in str(refused)
    assert "_GreaterThan" in str(refused) or "_Interval" in str(refused)


class MyPositive(constraints.Constraint):
    """A constraint class of the user's own."""

    def __init__(self, floor: float = 0.0) -> None:
        self.floor = floor
        super().__init__()


@needs_allowlist
def test_a_constraint_class_the_user_owns_gets_advice_and_loads_once_allowed(tmp_path):
    path = tmp_path / "mine.pt"
    torch.save(store({"x": torch.ones(2)}, {"x": MyPositive(1.0)}), path)
    refused = _refused_store(path, UntrustedGlobalError)
    assert refused.name == f"{__name__}.MyPositive"
    assert "add_safe_globals([MyPositive])" in str(refused)
    torch.serialization.add_safe_globals([MyPositive])
    pyro.get_param_store().load(path)
    assert pyro.get_param_store()._constraints["x"].floor == 1.0


def test_torchs_own_error_comes_back_as_the_packages_with_torchs_chained(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine can restore a cuda tensor")
    path = tmp_path / "cuda.pt"
    write_file(path, store({"x": tensor("0", 1, (1,), location="cuda:0")}), {"0": floats(1)})
    refused = _refused_store(path, UntrustedContentError)
    assert isinstance(refused.__cause__, RuntimeError)
    assert "torch refused to build it: RuntimeError" in str(refused)


# ---------------------------------------------------------------------------
# Other refusals: what the unpickler never hands out, and what pyro never writes


class Payload:
    """Unpickling it runs a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_a_crafted_optimizer_file_is_refused_and_none_of_it_runs(tmp_path, optimizer):
    path, marker = tmp_path / "evil_optim.pt", tmp_path / "ran"
    torch.save({"x": {"state": {}, "param_groups": [{"lr": 0.1, "x": Payload(marker)}]}}, path)
    optim = OPTIMIZERS[optimizer]()
    with pytest.raises(UntrustedGlobalError) as refused:
        optim.load(path)
    assert not marker.exists()
    assert refused.value.name in ("posix.system", "os.system")
    message = str(refused.value)
    assert "as an optimizer file" in message and "Nothing was loaded" in message
    assert "optim.set_state(torch.load(path, weights_only=False))" in message


def test_stock_runs_the_code_in_an_optimizer_file(tmp_path):
    path, marker = tmp_path / "evil_optim.pt", tmp_path / "ran"
    torch.save({"x": {"state": {}, "param_groups": [{"x": Payload(marker)}]}}, path)
    found = stock_error(f"pyro.optim.Adam({{'lr': 0.1}}).load({str(path)!r})")
    # 1.9.2 passes weights_only=False; older releases take torch's default (< 2.6: False).
    assert marker.exists() is (PYRO >= (1, 9, 2) or TORCH < (2, 6)), found


def test_stock_inflates_a_compressed_record_and_loads_stride_0(tmp_path):
    path = tmp_path / "bomb.pt"
    write_file(
        path,
        store({"x": tensor("0", 10**6, (10**6,))}, {}),
        {"0": bytes(4 * 10**6)},
        deflated=True,
    )
    expanded = write_file(
        tmp_path / "stride0.pt", {"x": {"e": tensor("0", 1, (10**7,), (0,))}}, {"0": floats(1)}
    )
    found = run_json(
        "import json, torch\n"
        f"a = torch.load({str(path)!r}, weights_only=True)['params']['x']\n"
        f"b = torch.load({str(expanded)!r}, weights_only=True)['x']['e']\n"
        "print(json.dumps([a.numel(), b.numel(), b.untyped_storage().nbytes()]))",
        fix=False,
    )
    assert found == [10**6, 10**7, 4]


CRAFTED_STORES = {
    "a class for a constraint": (
        lambda: store({"x": torch.ones(2)}, {"x": type(constraints.positive)}),
        "constraints['x']",
        "is torch.distributions.constraints._GreaterThan itself (not called)",
    ),
    "not a store": (lambda: [torch.ones(2)], "", "is a builtins.list"),
    "a list for a parameter": (
        lambda: store({"x": [1.0, 2.0]}, {}),
        "params['x']",
        "is a builtins.list",
    ),
    # pyro leaves a constraint without its parameter (a pyro.param whose initial
    # value raised): held against a scalar, its bounds cannot repeat their data.
    "a constraint without its parameter whose bound repeats its data": (
        lambda: {
            "params": {},
            "constraints": {"x": constraints.greater_than(torch.zeros(1).expand(10**6))},
        },
        "constraints['x']",
        "broadcast together they make 1000000 elements from 2 in the file",
    ),
}


@pytest.mark.parametrize("crafted", sorted(CRAFTED_STORES))
def test_crafted_store_content_is_refused(tmp_path, crafted):
    make, where, what = CRAFTED_STORES[crafted]
    path = tmp_path / "crafted.pt"
    torch.save(make(), path)
    refused = _refused_store(path, UntrustedContentError)
    assert refused.where == where, refused.where
    message = str(refused)
    assert what in message, message
    assert "set_state(torch.load(path, weights_only=False))" in message


def test_another_pickle_protocol_is_refused_and_says_why(tmp_path):
    path = tmp_path / "protocol4.pt"
    torch.save(store({"x": torch.ones(2)}), path, pickle_protocol=4)
    refused = _refused_store(path, UntrustedContentError)
    assert "is not pickle protocol 2" in str(refused), refused


BUILT: list[dict] = []


class Recorder(constraints.Constraint):
    """An allowed class whose own code records that it ran."""

    def __init__(self) -> None:
        self.n = 1

    def __setstate__(self, state: dict) -> None:
        BUILT.append(state)
        self.__dict__.update(state)


@needs_allowlist
def test_nothing_is_built_before_a_later_global_is_refused(tmp_path):
    path, marker = tmp_path / "evil.pt", tmp_path / "ran"
    torch.save(store({"a": torch.ones(1)}, {"a": Recorder(), "b": Payload(marker)}), path)
    torch.serialization.add_safe_globals([Recorder])
    BUILT.clear()
    _refused_store(path, UntrustedGlobalError)
    assert BUILT == []  # not even the allowed class's own code ran
    assert not marker.exists()


# ---------------------------------------------------------------------------
# No global side effect


@needs_allowlist
def test_the_users_own_allowlist_entries_survive_a_param_store_load(tmp_path):
    store_path, checkpoint = _store_file(tmp_path / "p.pt"), _checkpoint(tmp_path / "c.pt")
    torch.serialization.add_safe_globals(pyro_pickle_fix.safe_globals())
    before = set(torch.serialization.get_safe_globals())
    pyro.get_param_store().load(store_path)
    assert set(torch.serialization.get_safe_globals()) == before
    loaded = torch.load(checkpoint, weights_only=True)
    assert type(loaded["constraint"]) is type(constraints.positive)


@needs_allowlist
def test_another_threads_load_during_a_param_store_load_is_refused_as_without_it(tmp_path):
    store_path, checkpoint = _store_file(tmp_path / "p.pt"), _checkpoint(tmp_path / "c.pt")
    with pytest.raises(pickle.UnpicklingError) as stock:
        torch.load(checkpoint, weights_only=True)
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
        if not inside.is_set():  # the first storage: let the other thread load now
            inside.set()
            seen["other finished during the load"] = finished.wait(60)
        return storage

    thread = threading.Thread(target=other_thread)
    thread.start()
    try:
        pyro.get_param_store().load(store_path, map_location=map_location)
    finally:
        inside.set()
        thread.join(60)
    assert seen["other finished during the load"] is True
    assert seen["other"] == str(stock.value)


def test_the_loader_keeps_no_state_between_loads():
    import _thread
    import types

    stages = _loader_modules()
    mutable = {
        name: value
        for module in stages
        for name, value in vars(module).items()
        if isinstance(value, (dict, list, set, _thread.LockType, threading.local))
        and not name.startswith("__")
    }
    # Fixed tables only (written once at import, never changed by a load).
    assert set(mutable) <= {"NOT_ALLOWED", "_STORAGE_TYPES"}, sorted(mutable)
    assert not any(
        isinstance(v, types.ModuleType) and v.__name__ == "threading"
        for module in stages
        for v in vars(module).values()
    )


def _loader_modules():
    """The loader's stages: the package and each of its modules."""
    import sys

    return [m for n, m in sys.modules.items() if n.startswith("pyro_pickle_fix.loader")]


def _loader_files():
    return {module.__file__ for module in _loader_modules()}


# ---------------------------------------------------------------------------
# A fixed allowlist


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
    assert resolved == [name for name in loader_allowed.ALLOWED if name in defined]
    assert defined == set(resolved) | (defined & set(loader_allowed.NOT_ALLOWED))


def test_every_allowed_class_has_the_attributes_its_constructor_sets():
    expected = {
        "_Interval": {"lower_bound", "upper_bound"},
        "_IndependentConstraint": {"base_constraint", "reinterpreted_batch_ndims"},
        "_Cat": {"cseq", "dim", "lengths"},
        "_Real": set(),
        "MaskedConstraint": {"mask", "constraint0", "constraint1"},
    }
    found = {
        cls.__name__: loader_checks._constructor_attributes(cls)
        for cls in pyro_pickle_fix.safe_globals()
    }
    for name, attributes in expected.items():
        assert found[name] == attributes, name
    assert not any(
        loader_checks._is_descriptor(cls, a)
        for cls in pyro_pickle_fix.safe_globals()
        for a in found[cls.__name__]
    )


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


def test_the_docs_list_the_allowlist():
    text = (ROOT / "docs" / "loading.md").read_text()
    section = text.split("## The classes a param-store file may name", 1)[1].split("\n## ", 1)[0]
    paragraph = section.split("allows these classes")[1]
    listed = set(re.findall(r"`(_?\w+)`", paragraph.split("\n\n")[0]))
    assert listed == {name.rpartition(".")[2] for name in loader_allowed.ALLOWED}


# ---------------------------------------------------------------------------
# What torch promises, per version; both loads are repaired on every torch


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
    text = loader.advisory(version)
    if not named:
        assert text is None
        return
    assert text is not None
    assert re.findall(r"CVE-\d+-\d+", text) == named
    assert "not safe for a file you did not make" in text and "torch 2.10 or newer" in text


def test_status_names_the_advisory_that_applies_to_this_torch():
    report = pyro_pickle_fix.status()
    expected = loader.advisory(TORCH)
    assert report.advisory == expected
    if TORCH < (2, 10):
        assert "CVE-2026-24747" in str(report)
    else:
        assert "CVE-" not in str(report)


@pytest.mark.parametrize("target", [STORE_LOAD, OPTIM_LOAD])
def test_both_loads_are_wrapped_on_every_torch(target):
    dotted = target.replace(":", ".")
    row = next(row for row in pyro_pickle_fix.status().targets if row.target == dotted)
    assert row.wrapped is True
    assert not any(
        repair.check
        for repair in __import__("pyro_pickle_fix.fixes.loading", fromlist=["REPAIRS"]).REPAIRS
    )


def test_stock_loads_a_tensor_that_repeats_one_value(tmp_path):
    path = tmp_path / "stride0_optim.pt"
    repeated = torch.zeros(1, dtype=torch.float64).expand(10**8)
    torch.save({"AutoNormal.locs.g0": {"state": {0: {"exp_avg": repeated}}}}, path)
    assert path.stat().st_size < 4096
    found = run_python(
        "import pyro\n"
        "optim = pyro.optim.Adam({'lr': 0.1})\n"
        f"optim.load({str(path)!r})\n"
        "x = optim._state_waiting_to_be_consumed['AutoNormal.locs.g0']['state'][0]['exp_avg']\n"
        "print(x.numel())",
        fix=False,
    )
    assert found.stdout.strip() == str(10**8), found.stderr  # every stock release, every torch
    refused = _refused_optim(path, UntrustedContentError)
    assert "refers to 800000000 bytes of tensors" in str(refused), refused


def test_long_names_cost_nothing_until_a_refusal_names_them(tmp_path):
    # A 100 KB parameter name over a constraint of 9,000 parts: a place in the state
    # is written out only for a refusal, and then cut short.
    import tracemalloc

    name = "n" * 100_000
    real = REAL
    cat = New(
        G("torch.distributions.constraints._Cat"),
        {"cseq": [real] * 4_500, "dim": 0, "lengths": [1] * 4_500},
    )
    path = tmp_path / "long.pt"
    write_file(path, store({name: tensor("0", 4_500, (4_500,))}, {name: cat}), {"0": bytes(18_000)})
    tracemalloc.start()
    try:
        state = loader.load_state(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(state["constraints"][name].cseq) == 4_500
    assert peak < 20 * 2**20, peak
    cat.state["lengths"] = [1] * 4_499 + [G("torch.FloatStorage")]
    write_file(path, store({name: tensor("0", 4_500, (4_500,))}, {name: cat}), {"0": bytes(18_000)})
    refused = _refused_store(path, UntrustedContentError)
    assert len(refused.where) < 200 and refused.where.endswith(".lengths[4499]")


LONG = 100_000


@pytest.mark.parametrize(
    "case",
    ["param", "constraint", "optim", "global", "module", "storage", "record", "top keys"],
)
def test_every_value_from_the_file_in_a_message_is_cut_short(tmp_path, case):
    # Names of 8 million characters went into messages whole.
    path = tmp_path / "long.pt"
    name = "n" * LONG
    states = {
        "param": store({name: 5}),
        "constraint": store({}, {name: 5}),
        "optim": {name: 5},
        "global": store({"x": Call(G("os", name), ())}),
        "module": store({"x": Call(G(name, "system"), ())}),
        "storage": store({"x": tensor(name, 1, (1,))}),
        "top keys": {**{f"{i}{name}": 1 for i in range(10)}, "params": {}},
    }
    if case == "record":
        write_file(path, store({}), {"0": b"", name[:60_000]: b""})
    else:
        write_file(path, states[case])
    refuse = _refused_optim if case == "optim" else _refused_store
    error = UntrustedGlobalError if case in ("global", "module") else UntrustedContentError
    refused = refuse(path, error)
    assert len(str(refused)) < 1_500, (len(str(refused)), str(refused)[:300])
    assert "nnnnnnnnnn" in str(refused)


def _records(state: object, prefix: str) -> list[tuple[str, bytes]]:
    """The records torch.save writes for ``state``, under the top folder ``prefix``."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with zipfile.ZipFile(buffer) as archive:
        return [
            (prefix + info.filename.partition("/")[2], archive.read(info))
            for info in archive.infolist()
        ]


def _stored_zip(members: list[tuple[str, bytes]], base: int = 0, comment: bytes = b"") -> bytes:
    """A stored zip whose offsets count from ``base`` (to be placed there), with
    ``comment`` after its end record."""
    out, central = bytearray(), bytearray()
    for name, payload in members:
        central += _central_entry(name, payload, base + len(out))
        out += _local_header(name, payload) + payload
    count = len(members)
    end = struct.pack(
        "<4s4H2LH", b"PK\x05\x06", 0, 0, count, count, len(central), base + len(out), len(comment)
    )
    return bytes(out + central + end + comment)


@pytest.mark.parametrize("trailer", [b"", b"\0"])
def test_an_archive_hidden_in_the_end_records_comment_is_read_as_torch_reads_it_or_refused(
    tmp_path, trailer
):
    # Two end records: the first one's comment holds a second archive (and maybe a
    # byte more).  torch's reader takes the last end-record signature in the file;
    # the loader read the first archive, whose comment reaches the end of the file.
    first = _records(store({"x": torch.ones(2)}), "a/")
    second = _records(store({"y": torch.full((3,), 7.0)}), "b/")
    head = _stored_zip(first)
    hidden = _stored_zip(second, base=len(head)) + trailer
    path = tmp_path / "two_ends.pt"
    path.write_bytes(head[:-2] + struct.pack("<H", len(hidden)) + hidden)
    torchs = torch_reads(path)
    assert set(torchs["params"]) == {"y"}
    try:
        ours = loader.load_state(path)
    except UntrustedContentError as error:
        assert "end record" in str(error) or "first record at byte" in str(error), error
        _refused_store(path, UntrustedContentError)
    else:
        assert set(ours["params"]) == set(torchs["params"])


def test_record_names_that_differ_only_in_case_are_refused(tmp_path):
    # torch's reader looks a record up without regard to case: it read archive/data/a
    # for both storages, where the loader read each its own.
    pickled = dumps(store({"x": tensor("a", 2, (2,)), "y": tensor("A", 2, (2,))}))
    members = [
        ("archive/data.pkl", pickled),
        ("archive/byteorder", b"little"),
        ("archive/version", b"3\n"),
        ("archive/data/a", floats(1, 1)),
        ("archive/data/A", floats(7, 7)),
    ]
    path = tmp_path / "case.pt"
    path.write_bytes(_stored_zip(members))
    torchs = torch_reads(path)["params"]
    assert torch.equal(torchs["x"], torchs["y"])  # one record read for both
    refused = _refused_store(path, UntrustedContentError)
    assert "archive/data/A has the name of another record but for case" in str(refused)


def torch_reads(path):
    """What torch's own reader makes of a file a test wrote: its weights-only load
    with pyro's constraint classes allowed, where this torch has an allowlist
    (2.5+); else ``weights_only=False``, on a file of the test's own making."""
    if not hasattr(torch.serialization, "safe_globals"):
        return torch.load(path, weights_only=False)
    with torch.serialization.safe_globals(pyro_pickle_fix.safe_globals()):
        return torch.load(path, weights_only=True)


def saved_scheduler(make, path):
    """A scheduler ``make()`` gives, stepped once over a parameter ``loc`` of a new
    param store and saved to ``path``: (the scheduler, ``loc``)."""
    pyro.clear_param_store()
    scheduler = make()
    loc = pyro.param("loc", torch.zeros(2))
    scheduler([loc])
    scheduler.step()
    scheduler.save(path)
    return scheduler, loc


def _multistep() -> pyro.optim.PyroOptim:
    return pyro.optim.MultiStepLR(
        {
            "optimizer": torch.optim.SGD,
            "optim_args": {"lr": 0.01},
            "milestones": [2, 2],
            "gamma": 0.5,
        }
    )


@pytest.mark.parametrize(
    ("field", "value", "where"),
    [
        # The next scheduler step computed 2 ** (10 ** 8): seconds and memory, or
        # (a float gamma) an OverflowError, from a 1 kB file.
        ("milestones", "counter", "['milestones']"),
        ("gamma", 2**70, "['gamma']"),
        ("gamma", "0.5", "['gamma']"),
        ("base_lrs", ["0.01"], "['base_lrs']"),
    ],
)
def test_a_scheduler_state_with_a_huge_count_or_a_field_that_is_no_number_is_refused(
    tmp_path, field, value, where
):
    from collections import Counter

    genuine = tmp_path / "genuine.pt"
    saved_scheduler(_multistep, genuine)
    state = torch.load(genuine, weights_only=False)
    inner = state["loc"].get("scheduler", state["loc"])
    assert inner["milestones"] == Counter({2: 2})  # a milestone listed twice counts 2
    if value == "counter":
        value = Counter({inner["last_epoch"] + 1: 10**8})
    inner[field] = value
    crafted = tmp_path / "crafted.pt"
    torch.save(state, crafted)
    again = _multistep()
    again.load(genuine)  # the file pyro saved loads
    with pytest.raises(UntrustedContentError) as refused:
        _multistep().load(crafted)
    assert refused.value.where.endswith(where), refused.value
