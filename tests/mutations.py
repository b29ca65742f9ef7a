"""Files pyro wrote, taken apart and put back together with one thing changed: the
layers of torch's format (the zip archive, its records, the pickle in ``data.pkl``)
and the mutations ``tests/test_fuzz.py`` draws at each.

:func:`write_archive` writes records in the layout ``torch.save`` writes (every
record stored, its data aligned to 64 bytes by an ``FB`` extra field, a data
descriptor after it, a zip64 end record before the classic one), and lists where
each header field is, so that a mutation can change exactly one of them.  The
pickle is a list of opcodes (:class:`Op`), each re-encoded from its argument.
"""

from __future__ import annotations

import math
import pickle
import pickletools
import re
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace

import hypothesis.strategies as st

Records = list[tuple[str, bytes]]
#: Where a header field is: (offset in the file, width in bytes, what it is).
Field = tuple[int, int, str]

ALIGNMENT = 64  # torch.save aligns each record's data to this many bytes
_LOCAL = struct.Struct("<4s5H3L2H")
_DESCRIPTOR = struct.Struct("<4s3L")
_CENTRAL = struct.Struct("<4s6H3L5H2L")
_END64 = struct.Struct("<4sQ2H2L4Q")
_LOCATOR = struct.Struct("<4sLQL")
_END = struct.Struct("<4s4H2LH")
_FLAGS = 0x0808  # a data descriptor follows the data; names are UTF-8


def read_archive(raw: bytes) -> Records:
    """The records of a zip file, in the order it holds them."""
    import io

    with zipfile.ZipFile(io.BytesIO(raw)) as archive:
        return [(info.filename, archive.read(info)) for info in archive.infolist()]


def write_archive(records: Records) -> tuple[bytes, list[Field]]:
    """``records`` as ``torch.save`` lays them out, and where each header field is."""
    out = bytearray()
    fields: list[Field] = []

    def note(base: int, layout: str, names: tuple[str, ...]) -> None:
        offset = base
        for code, name in zip(re.findall(r"\d*[A-Za-z]", layout), names, strict=True):
            width = struct.calcsize("<" + code)
            if name:
                fields.append((offset, width, name))
            offset += width

    central = []
    for name, payload in records:
        encoded, at = name.encode("utf-8", "surrogatepass"), len(out)
        pad = -(at + _LOCAL.size + len(encoded) + 4) % ALIGNMENT
        extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
        out += _LOCAL.pack(b"PK\x03\x04", 0, _FLAGS, 0, 0, 0, 0, 0, 0, len(encoded), len(extra))
        local = ("version", "flags", "method", "time", "date", "crc", "csize", "size")
        local += ("name length", "extra length")
        note(at, "4sHHHHHLLLHH", ("", *(f"{name} local {part}" for part in local)))
        fields.append((at + _LOCAL.size + len(encoded) + 2, 2, f"{name} padding length"))
        out += encoded + extra + payload
        crc = zlib.crc32(payload)
        note(len(out), "4sLLL", ("", f"{name} descriptor crc", f"{name} descriptor csize", ""))
        fields.append((len(out) + 12, 4, f"{name} descriptor size"))
        out += _DESCRIPTOR.pack(b"PK\x07\x08", crc, len(payload), len(payload))
        central.append((name, encoded, crc, len(payload), at))
    directory = len(out)
    for name, encoded, crc, size, at in central:
        parts = (
            "made", "needed", "flags", "method", "time", "date", "crc", "csize", "size",
            "name length", "extra length", "comment length", "disk", "internal", "external",
            "offset",
        )  # fmt: skip
        note(len(out), "4sHHHHHHLLLHHHHHLL", ("", *(f"{name} central {part}" for part in parts)))
        out += _CENTRAL.pack(
            b"PK\x01\x02", 0, 0, _FLAGS, 0, 0, 0, crc, size, size, len(encoded), 0, 0, 0, 0, 0, at
        )
        out += encoded
    count, length, end64 = len(records), len(out) - directory, len(out)
    parts64 = ("record size", "made", "needed", "disk", "directory disk")
    parts64 += ("entries here", "entries", "directory size", "directory offset")
    note(end64, "4sQHHLLQQQQ", ("", *(f"zip64 end {part}" for part in parts64)))
    out += _END64.pack(b"PK\x06\x06", 44, 0x31E, 45, 0, 0, count, count, length, directory)
    note(len(out), "4sLQL", ("", "locator disk", "locator offset", "locator disks"))
    out += _LOCATOR.pack(b"PK\x06\x07", 0, end64, 1)
    parts = ("disk", "directory disk", "entries here", "entries", "directory size")
    parts += ("directory offset", "comment length")
    note(len(out), "4sHHHHLLH", ("", *(f"end {part}" for part in parts)))
    out += _END.pack(b"PK\x05\x06", 0, 0, count, count, length, directory, 0)
    return bytes(out), fields


# ---------------------------------------------------------------------------
# The pickle, as a list of opcodes


@dataclass(frozen=True)
class Op:
    """One pickle opcode and its argument (None for none), re-encoded on demand."""

    code: pickletools.OpcodeInfo
    arg: object

    def encode(self) -> bytes:
        return self.code.code.encode("latin-1") + _encode_arg(self.code.arg, self.arg)


def _encode_arg(descriptor: pickletools.ArgumentDescriptor | None, arg: object) -> bytes:
    if descriptor is None:
        return b""
    kind = descriptor.name
    fixed = {"uint1": "<B", "uint2": "<H", "int4": "<i", "uint4": "<I", "uint8": "<Q"}
    if kind in fixed:
        bits = 8 * struct.calcsize(fixed[kind])
        value = int(arg) % 2**bits  # type: ignore[call-overload]
        if kind == "int4" and value >= 2**31:
            value -= 2**32
        return struct.pack(fixed[kind], value)
    if kind == "float8":
        return struct.pack(">d", arg)
    if kind in ("long1", "long4"):
        body = pickle.encode_long(int(arg))  # type: ignore[attr-defined,call-overload]
        return (
            bytes([len(body) % 256]) if kind == "long1" else struct.pack("<i", len(body))
        ) + body
    if kind.startswith("unicodestring") and kind != "unicodestringnl":
        body = str(arg).encode("utf-8", "surrogatepass")
        return _length(kind[-1], len(body)) + body
    if kind in ("bytes1", "bytes4", "bytes8", "bytearray8", "string1", "string4"):
        body = arg.encode("latin-1") if isinstance(arg, str) else bytes(arg)  # type: ignore[arg-type]
        return _length(kind[-1], len(body)) + body
    if kind == "stringnl_noescape_pair":
        module, _, name = str(arg).partition(" ")
        return f"{module}\n{name}\n".encode("utf-8", "surrogatepass")
    if kind == "decimalnl_short":
        return (b"0" + str(int(arg)).encode() if type(arg) is bool else str(arg).encode()) + b"\n"
    if kind == "decimalnl_long":
        return str(arg).encode() + b"L\n"
    if kind in ("floatnl", "stringnl"):
        return repr(arg).encode() + b"\n"
    if kind == "unicodestringnl":
        return str(arg).encode("raw-unicode-escape") + b"\n"
    return str(arg).encode("utf-8", "surrogatepass") + b"\n"  # stringnl_noescape


def _length(width: str, size: int) -> bytes:
    return {"1": struct.pack("<B", size % 256), "4": struct.pack("<I", size)}.get(
        width, struct.pack("<Q", size)
    )


def parse_pickle(data: bytes) -> list[Op]:
    return [Op(code, arg) for code, arg, _ in pickletools.genops(data)]


def write_pickle(ops: list[Op]) -> bytes:
    return b"".join(op.encode() for op in ops)


OPCODES = {info.name: info for info in pickletools.opcodes}


def op(name: str, arg: object = None) -> Op:
    return Op(OPCODES[name], arg)


#: Globals a mutation may name: what torch's files name, what pyro's do, and what
#: neither should let through.
GLOBALS = (
    "torch._utils _rebuild_tensor_v2",
    "torch._utils _rebuild_parameter",
    "torch._utils _rebuild_parameter_with_state",
    "torch._utils _rebuild_sparse_tensor",
    "torch._utils _rebuild_meta_tensor_no_storage",
    "torch._utils _rebuild_wrapper_subclass",
    "torch._utils _rebuild_device_tensor_from_numpy",
    "collections OrderedDict",
    "collections Counter",
    "collections defaultdict",
    "torch FloatStorage",
    "torch DoubleStorage",
    "torch BoolStorage",
    "torch ByteStorage",
    "torch LongStorage",
    "torch HalfStorage",
    "torch UntypedStorage",
    "torch Tensor",
    "torch.nn.parameter Parameter",
    "torch float32",
    "torch device",
    "torch Size",
    "torch.distributions.constraints _Interval",
    "torch.distributions.constraints _GreaterThan",
    "torch.distributions.constraints _IndependentConstraint",
    "torch.distributions.constraints _Stack",
    "torch.distributions.constraints _Cat",
    "torch.distributions.constraints _Real",
    "torch.distributions.constraints _DependentProperty",
    "torch.distributions.constraints Constraint",
    "pyro.distributions.constraints _SoftplusPositive",
    "builtins eval",
    "builtins getattr",
    "builtins set",
    "builtins dict",
    "builtins list",
    "os system",
    "__builtin__ object",
    "copy_reg _reconstructor",
    "copyreg __newobj__",
    "torch.serialization _get_layout",
)

INTS = (0, 1, 2, 3, 4, 5, 7, 8, 16, 63, 64, 127, 128, 255, 256, 65535, 65536, 2**17)
INTS += (2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**64, 10**6, 2_000_000, 10**12)
INTS += tuple(-value for value in (1, 2, 128, 2**31, 2**63))
STRINGS = (
    "", "storage", "cpu", "cuda", "cuda:0", "cuda:99", "meta", "mps", "0", "1", "99",
    "data", "params", "constraints", "state", "param_groups", "scheduler", "optimizer",
    "lower_bound", "upper_bound", "base_constraint", "reinterpreted_batch_ndims",
    "event_dim", "_event_dim", "is_discrete", "check", "__class__", "__dict__",
    "__setstate__", "step", "exp_avg", "lr", "base_lrs", "last_epoch", "\x00", "é",
    "\ud800", "../x", "a" * 300,
)  # fmt: skip
FLOATS = (0.0, -0.0, 1.0, -1.0, 0.5, 1e308, -1e308, 5e-324, float("inf"), float("-inf"))
FLOATS += (float("nan"),)

#: Opcodes to insert, whole: every kind pickle has (protocols 0 to 5), with an
#: argument where one is needed.
_BARE = [info.name for info in pickletools.opcodes if info.arg is None]
_WITH_ARGUMENT: tuple[tuple[str, object], ...] = (
    *(("PROTO", 2), ("PROTO", 5), ("FRAME", 8), ("BININT1", 0), ("BININT1", 5)),
    *(("BININT2", 300), ("BININT", -1), ("BININT", 2**31 - 1), ("LONG1", 2**64)),
    *(("LONG4", 10**40), ("BINFLOAT", float("nan")), ("INT", 7), ("LONG", 7)),
    *(("FLOAT", 1.5), ("STRING", "x"), ("UNICODE", "x"), ("BINUNICODE", "storage")),
    *(("SHORT_BINUNICODE", "cpu"), ("BINUNICODE8", "0"), ("SHORT_BINBYTES", b"\x00")),
    *(("BINBYTES", b"ab"), ("BINBYTES8", b"ab"), ("BYTEARRAY8", b"ab")),
    *(("SHORT_BINSTRING", "x"), ("BINSTRING", "x"), ("PERSID", "0"), ("EXT1", 1)),
    *(("EXT2", 1), ("EXT4", 1), ("BINGET", 0), ("BINGET", 1), ("LONG_BINGET", 0)),
    *(("LONG_BINGET", 2**31), ("BINPUT", 0), ("BINPUT", 200), ("LONG_BINPUT", 1)),
    *(("LONG_BINPUT", 2_000_000), ("GET", 0), ("PUT", 0)),
    ("INST", "collections OrderedDict"),
)
TEMPLATES: tuple[Op, ...] = (
    *(op(name) for name in _BARE),
    *(op(name, arg) for name, arg in _WITH_ARGUMENT),
    *(op("GLOBAL", name) for name in GLOBALS),
)

#: Opcodes of one argument kind, which a mutation may turn into one another.
_SIBLINGS = (
    ("BININT1", "BININT2", "BININT", "BINGET", "BINPUT", "LONG_BINGET", "LONG_BINPUT"),
    ("BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8"),
    ("TUPLE1", "TUPLE2", "TUPLE3", "TUPLE", "EMPTY_TUPLE", "LIST", "DICT", "FROZENSET"),
    ("APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS", "BUILD", "REDUCE", "NEWOBJ"),
    ("EMPTY_DICT", "EMPTY_LIST", "EMPTY_SET", "EMPTY_TUPLE", "NONE", "NEWTRUE", "NEWFALSE"),
    ("MARK", "POP_MARK", "POP", "DUP", "STOP", "MEMOIZE"),
    ("GLOBAL", "INST"),
)


def new_arg(data: st.DataObject, old: Op) -> object:
    """Another argument for ``old``'s opcode: one of the interesting values of its
    kind, or one close to the old one."""
    arg = old.arg
    if type(arg) is bool or arg is None:
        return arg
    if isinstance(arg, int):
        near = st.integers(-3, 3).map(lambda step: arg + step)  # type: ignore[operator]
        return data.draw(st.one_of(st.sampled_from(INTS), near, st.integers()), label="int")
    if isinstance(arg, float):
        return data.draw(st.one_of(st.sampled_from(FLOATS), st.floats()), label="float")
    if old.code.name in ("GLOBAL", "INST"):
        return data.draw(st.sampled_from(GLOBALS), label="global")
    if isinstance(arg, str):
        edits = st.one_of(
            st.sampled_from(STRINGS),
            st.integers(0, len(arg)).map(lambda cut: arg[:cut]),  # type: ignore[index]
            st.text(max_size=8).map(lambda more: arg + more),  # type: ignore[operator]
            st.text(max_size=12),
        )
        return data.draw(edits, label="string")
    return data.draw(st.binary(max_size=16), label="bytes")


def mutate_pickle(data: st.DataObject, ops: list[Op]) -> list[Op]:
    """``ops`` with one to three opcodes deleted, repeated, moved, inserted, turned
    into another, or given another argument."""
    ops = list(ops)
    for _ in range(data.draw(st.integers(1, 3), label="pickle mutations")):
        at = data.draw(st.integers(0, len(ops) - 1), label="at") if ops else 0
        how = data.draw(
            st.sampled_from(("argument", "delete", "repeat", "move", "insert", "sibling"))
        )
        span = data.draw(st.integers(1, 8), label="span")
        if how == "argument" and ops:
            ops[at] = replace(ops[at], arg=new_arg(data, ops[at]))
        elif how == "delete":
            del ops[at : at + span]
        elif how in ("repeat", "move"):
            piece = ops[at : at + span]
            if how == "move":
                del ops[at : at + span]
            to = data.draw(st.integers(0, len(ops)), label="to")
            ops[to:to] = piece
        elif how == "insert":
            ops.insert(at, data.draw(st.sampled_from(TEMPLATES), label="op"))
        elif ops:
            old = ops[at]
            group = next((names for names in _SIBLINGS if old.code.name in names), None)
            if group is not None:
                name = data.draw(st.sampled_from(group), label="sibling")
                ops[at] = Op(OPCODES[name], old.arg if OPCODES[name].arg is not None else None)
                if OPCODES[name].arg is not None and old.arg is None:
                    ops[at] = Op(OPCODES[name], 0)
    return ops


def mutate_arguments(data: st.DataObject, ops: list[Op]) -> list[Op]:
    """``ops`` with one to three arguments changed (an integer, a float, a string, a
    global, a memo index), the opcodes as they were: a pickle of the same shape,
    which mostly gets past the unpickler to the checks."""
    ops = list(ops)
    places = [
        at for at, each in enumerate(ops) if each.arg is not None and each.code.name != "PROTO"
    ]
    for _ in range(data.draw(st.integers(1, 3), label="argument mutations")):
        at = data.draw(st.sampled_from(places), label="argument at")
        ops[at] = replace(ops[at], arg=new_arg(data, ops[at]))
    return ops


def mutate_bytes(data: st.DataObject, raw: bytes, label: str) -> bytes:
    """``raw`` with a few bytes overwritten, inserted or deleted, or cut short."""
    how = data.draw(st.sampled_from(("overwrite", "insert", "delete", "truncate")), label=label)
    at = data.draw(st.integers(0, max(len(raw) - 1, 0)), label=f"{label} at")
    if how == "truncate":
        return raw[:at]
    chunk = data.draw(st.binary(min_size=1, max_size=8), label=f"{label} bytes")
    if how == "overwrite":
        return raw[:at] + chunk + raw[at + len(chunk) :]
    if how == "insert":
        return raw[:at] + chunk + raw[at:]
    return raw[:at] + raw[at + len(chunk) :]


# ---------------------------------------------------------------------------
# The archive: header fields, and the records


def field_values(old: int, width: int, length: int) -> st.SearchStrategy[int]:
    """Values for a header field of ``width`` bytes that was ``old``, in a file of
    ``length`` bytes."""
    top = 2 ** (8 * width) - 1
    special = [0, 1, 2, top, top >> 1, (top >> 1) + 1, length, length - 1, length + 1]
    special += [old + step for step in (-64, -4, -2, -1, 1, 2, 4, 64)] + [old * 2, old + 2**16]
    values = st.one_of(st.sampled_from([value & top for value in special]), st.integers(0, top))
    return values.map(lambda value: value if value != old else old ^ 1)


def mutate_fields(data: st.DataObject, raw: bytes, fields: list[Field]) -> bytes:
    """``raw`` with one to three header fields set to other values."""
    out = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 3), label="field mutations")):
        offset, width, _name = data.draw(st.sampled_from(fields), label="field")
        old = int.from_bytes(out[offset : offset + width], "little")
        new = data.draw(field_values(old, width, len(out)), label="value")
        out[offset : offset + width] = new.to_bytes(width, "little")
    return bytes(out)


#: Record names a renaming may give: another record's, one torch.save never
#: writes, one outside the top folder.
def _names(records: Records) -> st.SearchStrategy[str]:
    top = records[0][0].split("/", 1)[0]
    made = ["data/99", "data/0", "data/00", "data/-1", "data/", "data/0/x", "data.pkl"]
    made += ["version", "byteorder", ".data/version", "../x", "x/data.pkl", "other", ""]
    made += ["data/\u00e9", "data/" + "9" * 70, ".format_version", "data/0 "]
    ours = [name for name, _ in records]
    return st.one_of(
        st.sampled_from(ours),
        st.sampled_from([f"{top}/{name}" for name in made] + made + [f"{top}2/data.pkl"]),
    )


def _storage_bytes(size: int) -> st.SearchStrategy[bytes]:
    single = [value for value in FLOATS if not math.isfinite(value) or abs(value) < 3e38]
    patterns = [struct.pack("<f", value) for value in single] + [b"\x02", b"\xff" * 8]
    patterns += [struct.pack("<d", value) for value in FLOATS] + [b"\x00\x00\xc0\x7f"]
    return st.one_of(st.sampled_from(patterns), st.binary(min_size=1, max_size=max(size, 1)))


def mutate_records(data: st.DataObject, records: Records) -> Records:
    """``records`` with one to three of them renamed, resized, dropped, repeated,
    reordered, or given other bytes."""
    records = list(records)
    for _ in range(data.draw(st.integers(1, 3), label="record mutations")):
        if not records:
            break
        at = data.draw(st.integers(0, len(records) - 1), label="record")
        name, payload = records[at]
        how = data.draw(
            st.sampled_from(("bytes", "rename", "resize", "drop", "repeat", "move", "small"))
        )
        if how == "bytes" and payload:
            offset = data.draw(st.integers(0, len(payload) - 1), label="offset")
            chunk = data.draw(_storage_bytes(len(payload)), label="bytes")
            records[at] = (name, (payload[:offset] + chunk + payload[offset:])[: len(payload)])
        elif how == "rename":
            records[at] = (data.draw(_names(records), label="name"), payload)
        elif how == "resize":
            size = data.draw(
                st.one_of(st.integers(0, len(payload) + 16), st.sampled_from([0, 1, 4096])),
                label="size",
            )
            records[at] = (name, (payload * (size // max(len(payload), 1) + 1))[:size])
        elif how == "drop":
            del records[at]
        elif how == "repeat":
            records.insert(data.draw(st.integers(0, len(records))), (name, payload))
        elif how == "move":
            del records[at]
            records.insert(data.draw(st.integers(0, len(records))), (name, payload))
        else:  # a small record's contents: the byte order, the version
            small = [b"little", b"big", b"", b"LITTLE", b"1", b"3", b"99", b"\x00" * 8]
            records[at] = (name, data.draw(st.sampled_from(small), label="contents"))
    return records


_INTS = ("BININT1", "BININT2", "BININT", "LONG1")


def declared_numel(ops: list[Op], key: str) -> tuple[int, int] | None:
    """Where the pickle first declares storage ``key``'s number of elements (the
    ``numel`` of ``('storage', type, key, location, numel)``), and that number."""
    memo = ("BINPUT", "LONG_BINPUT", "MEMOIZE")
    for at, each in enumerate(ops):
        if each.code.name == "BINUNICODE" and each.arg == key:
            after = [index for index in range(at + 1, len(ops)) if ops[index].code.name not in memo]
            if len(after) > 1 and ops[after[1]].code.name in _INTS:  # (after the location)
                return after[1], int(ops[after[1]].arg)  # type: ignore[call-overload]
    return None


def resize_storage(data: st.DataObject, records: Records) -> Records:
    """One storage made larger or smaller, its record and its declaration in the
    pickle alike: a file as consistent as pyro's, whose tensors may now need more
    than their storage holds."""
    storages = [name for name, _ in records if "/data/" in name]
    if not storages:
        return records
    name = data.draw(st.sampled_from(storages), label="storage")
    payload = dict(records)[name]
    ops = parse_pickle(next(p for n, p in records if n.endswith("/data.pkl")))
    found = declared_numel(ops, name.rsplit("/", 1)[1])
    if found is None or not found[1]:
        return records
    at, numel = found
    itemsize = len(payload) // numel
    new = data.draw(
        st.one_of(st.integers(0, numel + 4), st.sampled_from([0, 1, 64])), label="numel"
    )
    ops[at] = op("BININT", new)
    resized = (payload * (new // max(numel, 1) + 1))[: new * itemsize]
    changed = {name: resized}
    return [
        (each, write_pickle(ops) if each.endswith("/data.pkl") else changed.get(each, body))
        for each, body in records
    ]


def with_pickle(records: Records, change: Callable[[bytes], bytes]) -> Records:
    """``records`` with the pickle (``*/data.pkl``) changed."""
    return [
        (name, change(payload) if name.endswith("/data.pkl") else payload)
        for name, payload in records
    ]


def set_field(raw: bytes, fields: list[Field], name: str, value: int) -> bytes:
    """``raw`` with the header field ``name`` (as :func:`write_archive` lists it) set
    to ``value``."""
    offset, width = next((offset, width) for offset, width, label in fields if label == name)
    return raw[:offset] + value.to_bytes(width, "little") + raw[offset + width :]
