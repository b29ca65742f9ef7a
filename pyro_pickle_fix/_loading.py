"""Loading pyro's two files, the param store's (``ParamStoreDict.load``) and the
optimizer's (``PyroOptim.load``), without trusting them.

Each load owns its unpickler: :class:`_Unpickler`, a small pure-Python one that
knows the handful of pickle opcodes ``torch.save`` writes (protocol 2) and hands
out only what those two files hold: dense tensors and Parameters, plain
containers and scalars, and (in a param-store file) the constraint classes of
:data:`ALLOWED` plus any constraint class the user allowed with
``torch.serialization.add_safe_globals``.  It calls nothing the file names: a
tensor, a Parameter or a constraint comes out as an inert record, and nothing is
built (no storage read, no constraint object made) until the whole state has
been checked against the file:

1. the archive (:class:`_Archive`): torch's zip format, every record stored
   uncompressed, inside the file and not overlapping another; the legacy
   (non-zip) format is refused;
2. each storage the pickle declares has its record, of exactly its size, with
   the same dtype wherever it is declared, on a device torch can restore to;
3. the state (:class:`_Check`): the shape pyro writes; every tensor within its
   data (no stride 0 beyond a size-1 dimension); every constraint's attributes
   those its class's constructor sets, none of them a method; no constraint
   whose tensors broadcast past what the file holds; nesting at most
   :data:`MAX_DEPTH` along every path and at most :data:`MAX_ENTRY_NODES`
   objects per entry (shared references counted as copies, as pyro and torch
   copy them).

Only then :class:`_Build` reads the storages and makes the objects.  Nothing of
torch's is replaced, and the allowlist of a load is that load's alone: there is
no module-level state, no lock, nothing an interrupt, a nested load, a thread or
a fork could leave behind.

Loaded when pyro is imported; standard library only at module level.
"""

from __future__ import annotations

import itertools
import re
import struct
import sys
import zipfile

from .errors import UntrustedContentError, UntrustedGlobalError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from io import BufferedReader
    from typing import Any, NoReturn

    #: Where in the state: a top-level name, or (the container's place, "[" or
    #: ".", key), written out only for a refusal (:func:`_render`).
    Where = str | tuple[Any, str, Any]


#: What a param-store file may name besides tensors: every constraint class that
#: torch and pyro define (``module.qualname``), fixed, whatever the process has
#: imported.  A name this torch or pyro lacks is skipped.  Keep in step with
#: torch and pyro: ``tests/test_loading.py`` checks that this list and
#: :data:`NOT_ALLOWED` together are every ``Constraint`` subclass they define.
ALLOWED: tuple[str, ...] = (
    "torch.distributions.constraints.Constraint",
    "torch.distributions.constraints.MixtureSameFamilyConstraint",  # torch 2.1+
    "torch.distributions.constraints._Boolean",
    "torch.distributions.constraints._Cat",
    "torch.distributions.constraints._CorrCholesky",
    "torch.distributions.constraints._Dependent",
    "torch.distributions.constraints._GreaterThan",
    "torch.distributions.constraints._GreaterThanEq",
    "torch.distributions.constraints._HalfOpenInterval",
    "torch.distributions.constraints._IndependentConstraint",
    "torch.distributions.constraints._IntegerGreaterThan",
    "torch.distributions.constraints._IntegerInterval",
    "torch.distributions.constraints._IntegerLessThan",
    "torch.distributions.constraints._Interval",
    "torch.distributions.constraints._LessThan",
    "torch.distributions.constraints._LowerCholesky",
    "torch.distributions.constraints._LowerTriangular",
    "torch.distributions.constraints._Multinomial",
    "torch.distributions.constraints._OneHot",
    "torch.distributions.constraints._PositiveDefinite",
    "torch.distributions.constraints._PositiveSemidefinite",
    "torch.distributions.constraints._Real",
    "torch.distributions.constraints._Simplex",
    "torch.distributions.constraints._Square",
    "torch.distributions.constraints._Stack",
    "torch.distributions.constraints._Symmetric",
    "pyro.distributions.coalescent.CoalescentTimesConstraint",
    "pyro.distributions.constraints._CorrMatrix",
    "pyro.distributions.constraints._Integer",
    "pyro.distributions.constraints._OrderedVector",
    "pyro.distributions.constraints._PositiveOrderedVector",
    "pyro.distributions.constraints._SoftplusLowerCholesky",
    "pyro.distributions.constraints._SoftplusPositive",
    "pyro.distributions.constraints._Sphere",
    "pyro.distributions.constraints._UnitLowerCholesky",
    "pyro.distributions.mixture.MaskedConstraint",
    "pyro.distributions.one_one_matching.OneOneMatchingConstraint",
    "pyro.distributions.one_two_matching.OneTwoMatchingConstraint",
)

#: Constraint classes that torch or pyro define and :data:`ALLOWED` leaves out.
NOT_ALLOWED: dict[str, str] = {
    # A property subclass: its instances wrap a function, which no weights-only
    # file can hold, so no genuine file needs it.
    "torch.distributions.constraints._DependentProperty": "a property that wraps a function",
}

#: Published advisories against torch's weights-only loading: the first torch
#: (major, minor) that fixes each, and what it allows a crafted file to do.
ADVISORIES: tuple[tuple[tuple[int, int], str], ...] = (
    (
        (2, 6),
        "CVE-2025-32434 (torch < 2.6): a crafted file can run code even with "
        "torch.load(..., weights_only=True)",
    ),
    (
        (2, 10),
        "CVE-2026-24747 (torch < 2.10): a crafted file can corrupt memory in the "
        "weights-only unpickler",
    ),
)

#: Nesting that a genuine constraint or optimizer state never comes near, counted
#: along every path.
MAX_DEPTH = 32
#: Objects in one entry (a parameter's constraint, a parameter's optimizer state),
#: shared references counted as copies; and in the whole state.
MAX_ENTRY_NODES = 10_000
MAX_NODES = 2_000_000
#: Steps of the broadcast check (an object looked at, an axis compared), all the
#: distinct constraints of a file together: a genuine file takes 2 a parameter (a
#: scalar bound) to some 10 (tensor bounds), 650,000 at most at 65,000 parameters.
MAX_FITS_WORK = 2_000_000
#: Records in the archive: ``torch.save`` writes one a storage and a few more; the
#: largest files :data:`MAX_OBJECTS` allows hold some 110,000 storages (an amsgrad
#: Adam state of 27,000 parameters).  Checked before the zip directory is read.
MAX_RECORDS = 2**17
#: The tensors of an optimizer file, in bytes, each reference counted as a copy
#: (``Optimizer.load_state_dict`` casts each one separately), at most this many times
#: the file's size: a file that pyro saves refers to each storage's data once.
REFERENCED = 2
#: The pickle of a state (``data.pkl``): pyro writes some 150 bytes a parameter
#: in a param-store file and some 350 in an optimizer file.
MAX_PICKLE = 16 * 2**20
#: Containers, marks, memo entries, globals and records the pickle may make: pyro's
#: files make about 30 a parameter in a param-store file and 50 to 75 in an
#: optimizer file (some 65,000 and 27,000 parameters).  With :data:`MAX_PICKLE`,
#: what unpickling a file can allocate is bounded: about 8 bytes a pickle byte
#: (references) and 100 bytes an object.
MAX_OBJECTS = 2_000_000
#: An int dict key (an optimizer state's parameter index) and a memo index are
#: below this: each hashes to itself, so no two collide, and a dict of any size
#: the file makes costs linear time.
MAX_INT_KEY = MAX_OBJECTS


def advisory(torch_version: tuple[int, ...]) -> str | None:
    """What the published advisories say about weights-only loading on that torch
    (``(2, 5, 1)``, say); None from torch 2.10 on, where none applies."""
    found = [text for fixed, text in ADVISORIES if tuple(torch_version[:2]) < fixed]
    if not found:
        return None
    version = ".".join(map(str, torch_version))
    return (
        f"torch {version}: weights-only loading is not safe for a file you did not "
        f"make: {'; '.join(found)}. Upgrade to torch 2.10 or newer."
    )


# ---------------------------------------------------------------------------
# The allowlist


def safe_globals() -> list[type]:
    """The constraint classes of :data:`ALLOWED` that this torch and pyro define:
    what a param-store file needs beyond tensors.  The same list whatever the
    process has imported.  To load a file that embeds ``get_state()`` yourself::

        torch.serialization.add_safe_globals(pyro_pickle_fix.safe_globals())
        state = torch.load(path, weights_only=True)
    """
    import importlib

    found = []
    for name in ALLOWED:
        module_name, _, attribute = name.rpartition(".")
        try:
            module = importlib.import_module(module_name)
        except ImportError:  # pyro is not installed, or this release lacks the module
            continue
        cls = vars(module).get(attribute)
        if isinstance(cls, type):
            found.append(cls)
    return found


# ---------------------------------------------------------------------------
# What is loaded, and how a refusal reads


class _Kind:
    """What is loaded: its name in messages, what it may hold, and how a user loads
    a file they trust."""

    def __init__(self, what: str, needs: str, trusted: str, *, constraints: bool) -> None:
        self.what = what
        self.needs = needs
        self.trusted = trusted
        self.constraints = constraints


STORE = _Kind(
    "a param-store file",
    "a tensor rebuild, a plain container or one of the constraint classes that "
    "pyro_pickle_fix.safe_globals() lists",
    "pyro.get_param_store().set_state(torch.load(path, weights_only=False))",
    constraints=True,
)
OPTIM = _Kind(
    "an optimizer file",
    "a tensor rebuild or a plain container",
    "optim.set_state(torch.load(path, weights_only=False))",
    constraints=False,
)


def _refuse(filename: Any, kind: _Kind, where: str, what: str, fix: str = "") -> NoReturn:
    raise UntrustedContentError(
        f"pyro-pickle-fix refused to load {str(filename)!r} as {kind.what}: {where or 'it'} "
        f"{what}, which a file that pyro saves never holds. Nothing was loaded. "
        f"{fix + ' ' if fix else ''}If you trust the whole file, load it yourself: "
        f"{kind.trusted}.",
        where,
    )


#: The globals that make a kind of tensor (torch's rebuilds, the Tensor and Parameter
#: classes): a refusal says so; any other global "could run code".
_TENSOR_GLOBALS = frozenset(
    [
        *(
            f"torch._utils._rebuild_{name}"
            for name in (
                "tensor",
                "tensor_v2",
                "tensor_v3",
                "sparse_tensor",
                "sparse_csr_tensor",
                "nested_tensor",
                "device_tensor_from_cpu_tensor",
                "device_tensor_from_numpy",
                "xla_tensor",
                "mtia_tensor",
                "meta_tensor_no_storage",
                "wrapper_subclass",
                "qtensor",
                "parameter",
                "parameter_with_state",
            )
        ),
        "torch.Tensor",
        "torch._tensor.Tensor",
        "torch.nn.parameter.Parameter",
        "torch.nn.parameter.UninitializedParameter",
        "torch.nn.parameter.Buffer",
        "torch.nn.parameter.UninitializedBuffer",
    ]
)


def _refuse_global(
    filename: Any, kind: _Kind, name: str, allowed: dict[str, type] | None = None
) -> NoReturn:
    advice = ""
    shown = _text(name)
    cls = _imported_class(name)
    if kind.constraints and cls is not None and cls in (allowed or {}).values():
        known = ", ".join(sorted(other for other, each in (allowed or {}).items() if each is cls))
        advice = (
            f" {shown} is another name of {known}, which this load allows under that "
            "name: the file names it under a name pyro never writes."
        )
    elif kind.constraints and cls is not None and _is_constraint_class(cls):
        advice = (
            f" {shown} is a constraint class this process has imported: if you trust it, "
            f"allow it first: torch.serialization.add_safe_globals([{cls.__name__}])."
        )
    if name in _TENSOR_GLOBALS:
        why = (
            "which makes a kind of tensor that pyro's files never hold (only dense "
            "tensors whose data is in the file, and Parameters of them, load)"
        )
    else:
        why = f"which is neither {kind.needs}, so loading it could run code named in the file"
    raise UntrustedGlobalError(
        f"pyro-pickle-fix refused to load {str(filename)!r} as {kind.what}: it needs "
        f"the global {_short(name)}, {why}. Nothing was loaded.{advice} If you trust the "
        f"whole file, load it yourself: {kind.trusted}.",
        name,
    )


def _imported_class(name: str) -> type | None:
    """The class ``module.Name`` names, if its module is imported already (nothing
    is imported for a name a file gives)."""
    module_name, _, attribute = name.rpartition(".")
    module = sys.modules.get(module_name)
    found = vars(module).get(attribute) if module is not None else None
    return found if isinstance(found, type) else None


def _is_constraint_class(cls: type) -> bool:
    constraints = sys.modules.get("torch.distributions.constraints")
    base = getattr(constraints, "Constraint", None)
    return isinstance(base, type) and issubclass(cls, base) and cls is not base


def _type(value: Any) -> str:
    cls = type(value)
    return f"{cls.__module__}.{cls.__qualname__}"


# ---------------------------------------------------------------------------
# The archive, checked before anything is read from it

#: The records torch's zip format holds besides the storages (``data/<key>``).
_RECORDS = frozenset(
    {
        "data.pkl",
        "version",
        ".data/version",
        "byteorder",
        ".format_version",
        ".storage_alignment",
        ".data/serialization_id",
    }
)
_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # a zip file's local file header
_STORAGE_KEY = re.compile(r"[0-9A-Za-z_]{1,64}")


class _Archive:
    """A zip file as ``torch.save`` writes it, checked: one top folder, every record
    stored (not compressed, not encrypted) at a place of its own inside the file."""

    def __init__(self, file: BufferedReader, filename: Any, kind: _Kind) -> None:
        self.file, self.filename, self.kind = file, filename, kind
        file.seek(0, 2)
        self.length = length = file.tell()
        file.seek(0)
        end = getattr(zipfile, "_EndRecData", None)  # what ZipFile reads first
        try:
            found = end(file) if end is not None else None
        except (OSError, ValueError, struct.error):
            found = None
        if found is not None and found[4] > MAX_RECORDS:  # _ECD_ENTRIES_TOTAL
            self.refuse(
                "",
                f"is an archive of {found[4]} records, more than {MAX_RECORDS} (torch.save "
                "writes one a storage and a few more)",
            )
        try:
            with zipfile.ZipFile(file) as archive:
                infos = archive.infolist()
        except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError) as error:
            raise self._untrusted(
                "",
                "is not a zip archive as torch.save writes one (it may be torch's legacy "
                "format, torch.save(..., _use_new_zipfile_serialization=False))",
            ) from error
        pickles = [info.filename for info in infos if info.filename.endswith("/data.pkl")]
        if len(pickles) != 1 or pickles[0].count("/") != 1:
            self.refuse("", "is not an archive of one torch.save() state (one */data.pkl)")
        self.prefix = pickles[0][: -len("data.pkl")]
        #: record name (without the top folder) -> (where its data starts, its size)
        self.records: dict[str, tuple[int, int]] = {}
        spans = []
        for info in infos:
            name = info.filename
            rest = name[len(self.prefix) :] if name.startswith(self.prefix) else ""
            storage = rest.startswith("data/") and _STORAGE_KEY.fullmatch(rest[5:])
            if rest not in _RECORDS and not storage:
                self.refuse(name, "is a record that torch.save does not write")
            if rest in self.records:
                self.refuse(name, "is in the archive twice")
            if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
                self.refuse(
                    name,
                    "is stored compressed (torch.save stores every record as it is; a "
                    "compressed one can inflate far beyond the file)",
                )
            if info.flag_bits & 0x1:
                self.refuse(name, "is encrypted")
            start = self._data_start(info)
            if start + info.file_size > length:
                self.refuse(name, f"claims {info.file_size} bytes that the file does not hold")
            spans.append((info.header_offset, start + info.file_size, name))
            self.records[rest] = (start, info.file_size)
        spans.sort()
        for (_, end, name), (following, _, _) in itertools.pairwise(spans):
            if end > following:
                self.refuse(name, "overlaps the record after it")
        order = self.small("byteorder", 16)
        if (order or b"little") != sys.byteorder.encode():
            self.refuse(
                "byteorder",
                f"says {order!r}, not this machine's {sys.byteorder!r} (pyro-pickle-fix "
                "loads files saved on a machine of the same byte order only)",
            )

    def _data_start(self, info: zipfile.ZipInfo) -> int:
        self.file.seek(info.header_offset)
        header = self.file.read(_LOCAL_HEADER.size)
        if len(header) != _LOCAL_HEADER.size:
            self.refuse(info.filename, "has no local header")
        fields = _LOCAL_HEADER.unpack(header)
        name_length, extra_length = fields[-2], fields[-1]
        name = self.file.read(name_length)
        if fields[0] != b"PK\x03\x04" or fields[4] != 0 or name != info.filename.encode():
            self.refuse(info.filename, "has a local header that does not match the directory")
        return int(info.header_offset + _LOCAL_HEADER.size + name_length + extra_length)

    def small(self, name: str, limit: int) -> bytes | None:
        """A record read whole (the pickle, the byte order); None if there is none."""
        if name not in self.records:
            return None
        start, size = self.records[name]
        if size > limit:
            self.refuse(name, f"is {size} bytes (more than {limit})")
        self.file.seek(start)
        return self.file.read(size)

    def read_into(self, name: str, buffer: Any) -> None:
        """A record's bytes, into ``buffer`` (of exactly the record's size)."""
        start, size = self.records[name]
        self.file.seek(start)
        if size and self.file.readinto(buffer) != size:
            self.refuse(name, "is cut short")

    def _untrusted(self, where: str, what: str) -> UntrustedContentError:
        try:
            _refuse(self.filename, self.kind, where, what)
        except UntrustedContentError as error:
            return error

    def refuse(self, where: str, what: str) -> NoReturn:
        _refuse(self.filename, self.kind, _text(where), what)


# ---------------------------------------------------------------------------
# The unpickler: what a file names becomes an inert record


class _Storage:
    """A storage the pickle declares: checked against its record, read only when the
    whole state has been checked."""

    __slots__ = ("dtype", "key", "location", "numel")

    def __init__(self, key: str, dtype: Any, location: str, numel: int) -> None:
        self.key, self.dtype, self.location, self.numel = key, dtype, location, numel


class _Tensor:
    """``_rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[,
    metadata])``, or ``_rebuild_parameter(tensor, requires_grad, hooks)``
    (``parameter``), not yet built."""

    __slots__ = ("args", "parameter")

    def __init__(self, args: tuple[Any, ...], parameter: bool) -> None:
        self.args, self.parameter = args, parameter


class _Object:
    """An instance of an allowed constraint class (NEWOBJ, then BUILD), not yet built."""

    __slots__ = ("cls", "state")

    def __init__(self, cls: type) -> None:
        self.cls: type = cls
        self.state: Any = None


class _Global:
    """What GLOBAL hands out: a marker, never the object it names."""

    __slots__ = ("name", "role", "value")

    def __init__(self, name: str, role: str, value: Any = None) -> None:
        self.name, self.role, self.value = name, role, value

    def __repr__(self) -> str:
        return self.name


class _Hooks:
    """``collections.OrderedDict()``: a tensor's (always empty) backward hooks."""

    __slots__ = ()


_STORAGE_TYPES = {
    "DoubleStorage": "float64",
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "ComplexDoubleStorage": "complex128",
    "ComplexFloatStorage": "complex64",
}
_LOCATION = re.compile(r"(cpu|cuda|mps|xpu)(:[0-9]{1,4})?")


class _Unpickler:
    """The opcodes of pickle protocol 2 that ``torch.save`` writes, and nothing
    else; what a GLOBAL names only through :meth:`find_class`."""

    def __init__(self, data: bytes, archive: _Archive, allowed: dict[str, type]) -> None:
        self.data = data
        self.archive = archive
        self.kind = archive.kind
        self.allowed = allowed  # constraint classes, by module.qualname: this load's own
        self.storages: dict[str, _Storage] = {}
        self.objects = 0

    def refuse(self, what: str) -> NoReturn:
        _refuse(self.archive.filename, self.kind, "its pickle", what)

    def find_class(self, module: str, name: str) -> _Global:
        dotted = f"{module}.{name}"
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_parameter"):
            return _Global(dotted, name)
        if dotted == "collections.OrderedDict":
            return _Global(dotted, "hooks")
        if module == "torch" and name in _STORAGE_TYPES:
            import torch

            return _Global(dotted, "storage", getattr(torch, _STORAGE_TYPES[name]))
        cls = self.allowed.get(dotted) if self.kind.constraints else None
        if cls is not None:
            return _Global(dotted, "class", cls)
        _refuse_global(self.archive.filename, self.kind, dotted, self.allowed)

    def persistent_load(self, pid: Any) -> _Storage:
        if not (type(pid) is tuple and len(pid) == 5 and pid[0] == "storage"):
            self.refuse(f"declares a persistent object ({_describe(pid)}) that is not a storage")
        _, storage_type, key, location, numel = pid
        if not (isinstance(storage_type, _Global) and storage_type.role == "storage"):
            self.refuse(f"declares storage {_short(key)} of type {_describe(storage_type)}")
        if type(key) is not str or type(numel) is not int or numel < 0:
            self.refuse(f"declares a storage with key {_short(key)} and size {_short(numel)}")
        if type(location) is not str or not _LOCATION.fullmatch(location):
            self.refuse(
                f"declares storage {_short(key)} on device {_short(location)}, which holds no data "
                "in the file (pyro saves cpu, cuda, mps or xpu tensors)"
            )
        dtype = storage_type.value
        known = self.storages.get(key)
        if known is not None:
            if (known.dtype, known.numel, known.location) != (dtype, numel, location):
                self.refuse(f"declares storage {_short(key)} twice, differently")
            return known
        record = f"data/{key}"
        if record not in self.archive.records:
            self.refuse(
                f"declares storage {_short(key)}, which has no record {_short(record)} in the file"
            )
        size = self.archive.records[record][1]
        itemsize = _itemsize(dtype)
        if size != numel * itemsize:
            self.refuse(
                f"declares storage {_short(key)} as {numel} x {dtype} ({numel * itemsize} bytes), "
                f"but its record holds {size} bytes"
            )
        storage = self.storages[key] = _Storage(key, dtype, location, numel)
        return storage

    def made(self) -> None:
        self.objects += 1
        if self.objects > MAX_OBJECTS:
            self.refuse(f"makes more than {MAX_OBJECTS} objects")

    def reduce(self, func: Any, args: Any) -> Any:
        if not isinstance(func, _Global) or type(args) is not tuple:
            self.refuse(f"calls {_type(func)} (REDUCE of something that is not a function)")
        if func.role in ("_rebuild_tensor_v2", "_rebuild_parameter"):
            return _Tensor(args, func.role == "_rebuild_parameter")
        if func.role == "hooks" and args == ():
            return _Hooks()
        self.refuse(f"calls {func.name} with {len(args)} arguments, which torch.save never writes")

    def load(self) -> Any:
        data, unpack_from = self.data, struct.unpack_from
        stack: list[Any] = []
        marks: list[list[Any]] = []
        memo: dict[int, Any] = {}
        pos, end = 0, len(data)
        try:
            if data[:2] != b"\x80\x02":
                self.refuse(
                    f"is not pickle protocol 2 (it starts {data[:2]!r}; torch.save writes "
                    "protocol 2)"
                )
            pos = 2
            while pos < end:
                op = data[pos]
                pos += 1
                if op == 0x58:  # X BINUNICODE
                    (size,) = unpack_from("<I", data, pos)
                    pos += 4
                    if pos + size > end:
                        self.refuse("ends inside a string")
                    stack.append(str(data[pos : pos + size], "utf-8", "surrogatepass"))
                    pos += size
                elif op == 0x71:  # q BINPUT
                    self.made()
                    memo[data[pos]] = stack[-1]
                    pos += 1
                elif op == 0x72:  # r LONG_BINPUT
                    self.made()
                    index = unpack_from("<I", data, pos)[0]
                    if index >= MAX_INT_KEY:
                        self.refuse(f"memoizes at index {index} (pickle counts from 0)")
                    memo[index] = stack[-1]
                    pos += 4
                elif op == 0x68:  # h BINGET
                    stack.append(memo[data[pos]])
                    pos += 1
                elif op == 0x6A:  # j LONG_BINGET
                    stack.append(memo[unpack_from("<I", data, pos)[0]])
                    pos += 4
                elif op == 0x28:  # ( MARK
                    self.made()
                    marks.append(stack)
                    stack = []
                elif op == 0x4B:  # K BININT1
                    stack.append(data[pos])
                    pos += 1
                elif op == 0x4D:  # M BININT2
                    stack.append(unpack_from("<H", data, pos)[0])
                    pos += 2
                elif op == 0x4A:  # J BININT
                    stack.append(unpack_from("<i", data, pos)[0])
                    pos += 4
                elif op == 0x8A:  # LONG1
                    size = data[pos]
                    if size > 16:
                        self.refuse(f"holds an integer of {size} bytes")
                    stack.append(
                        int.from_bytes(data[pos + 1 : pos + 1 + size], "little", signed=True)
                    )
                    pos += 1 + size
                elif op == 0x47:  # G BINFLOAT
                    stack.append(unpack_from(">d", data, pos)[0])
                    pos += 8
                elif op == 0x4E:  # N NONE
                    stack.append(None)
                elif op == 0x88:  # NEWTRUE
                    stack.append(True)
                elif op == 0x89:  # NEWFALSE
                    stack.append(False)
                elif op == 0x7D:  # } EMPTY_DICT
                    self.made()
                    stack.append({})
                elif op == 0x5D:  # ] EMPTY_LIST
                    self.made()
                    stack.append([])
                elif op == 0x29:  # ) EMPTY_TUPLE
                    stack.append(())
                elif op == 0x74:  # t TUPLE
                    self.made()
                    items = stack
                    stack = marks.pop()
                    stack.append(tuple(items))
                elif op in (0x85, 0x86, 0x87):  # TUPLE1, TUPLE2, TUPLE3
                    self.made()
                    count = op - 0x84
                    if len(stack) < count:
                        self.refuse("makes a tuple of items it does not have")
                    items = stack[-count:]
                    del stack[-count:]
                    stack.append(tuple(items))
                elif op == 0x73:  # s SETITEM
                    value = stack.pop()
                    key = stack.pop()
                    self.setitems(stack[-1], [key, value])
                elif op == 0x75:  # u SETITEMS
                    items = stack
                    stack = marks.pop()
                    self.setitems(stack[-1], items)
                elif op == 0x61:  # a APPEND
                    value = stack.pop()
                    self.target_list(stack[-1]).append(value)
                elif op == 0x65:  # e APPENDS
                    items = stack
                    stack = marks.pop()
                    self.target_list(stack[-1]).extend(items)
                elif op == 0x63:  # c GLOBAL
                    newline = data.find(b"\n", pos)
                    second = data.find(b"\n", newline + 1)
                    if newline < 0 or second < 0:
                        self.refuse("ends inside a global's name")
                    module = str(data[pos:newline], "utf-8")
                    name = str(data[newline + 1 : second], "utf-8")
                    pos = second + 1
                    self.made()
                    stack.append(self.find_class(module, name))
                elif op == 0x52:  # R REDUCE
                    self.made()
                    args = stack.pop()
                    stack[-1] = self.reduce(stack[-1], args)
                elif op == 0x81:  # NEWOBJ
                    self.made()
                    args = stack.pop()
                    cls = stack[-1]
                    if not (isinstance(cls, _Global) and cls.role == "class" and args == ()):
                        self.refuse(f"makes an object of {_describe(cls)} with arguments")
                    stack[-1] = _Object(cls.value)
                elif op == 0x62:  # b BUILD
                    state = stack.pop()
                    target = stack[-1]
                    if type(target) is not _Object or target.state is not None:
                        self.refuse(f"sets the state of {_type(target)}")
                    if type(state) is not dict:
                        self.refuse(f"gives {target.cls.__qualname__} a state of {_type(state)}")
                    target.state = state
                elif op == 0x51:  # Q BINPERSID
                    self.made()
                    stack[-1] = self.persistent_load(stack[-1])
                elif op == 0x2E:  # . STOP
                    if len(stack) != 1 or marks or pos != end:
                        self.refuse("does not end where its one object ends")
                    return stack[0]
                else:
                    self.refuse(
                        f"has opcode {bytes([op])!r} at byte {pos - 1}, which torch.save "
                        "(pickle protocol 2) does not write"
                    )
        except (IndexError, KeyError, struct.error, UnicodeDecodeError) as error:
            self.refuse(f"is malformed at byte {pos} ({type(error).__name__}: {error})")
        self.refuse("ends without a STOP")

    def setitems(self, target: Any, items: list[Any]) -> None:
        if type(target) is not dict or len(items) % 2:
            self.refuse(f"sets items on {_type(target)}")
        for index in range(0, len(items), 2):
            key = items[index]
            if type(key) not in _KEYS:
                self.refuse(f"has a dict key of type {_type(key)}")
            if type(key) is int and not 0 <= key < MAX_INT_KEY:
                self.refuse(
                    f"has the dict key {_short(key)} (pyro's files key by name, and torch's "
                    f"optimizer state by an index from 0 to {MAX_INT_KEY - 1})"
                )
            target[key] = items[index + 1]

    def target_list(self, target: Any) -> list[Any]:
        if type(target) is not list:
            self.refuse(f"appends to {_type(target)}")
        return target


#: Dict keys: names, indices, and the two flags and None.  No float key, and an int
#: key is an index below :data:`MAX_INT_KEY`: keys of distinct hashes that share few
#: low bits, so that no dict the file makes costs more than linear time (Python's
#: hash of an int is the int modulo 2**61 - 1: a file could make every key collide).
_KEYS = (str, int, bool, type(None))
_SCALARS = frozenset((str, int, float, bool, type(None)))


# ---------------------------------------------------------------------------
# The state, checked whole before anything is built


class _Check:
    """One pass over an unpickled state: its shape, each tensor against its data,
    each constraint's attributes, and how deep and how large it is along every path
    (each distinct object is looked into once; a shared one counts as often as it
    is reached)."""

    def __init__(self, filename: Any, kind: _Kind, length: int) -> None:
        self.filename, self.kind = filename, kind
        self.length = length  # the file's size in bytes
        #: id -> (height, expanded size, expanded tensor bytes)
        self.seen: dict[int, tuple[int, int, int]] = {}
        self.referenced = 0  # tensor bytes of the entries so far, shared ones as copies
        self.open: set[int] = set()  # the objects the walk is inside of
        self.attributes: dict[type, frozenset[str]] = {}  # this load's own
        #: constraint id -> (its tensors' hull, their elements, their shapes)
        self.tensor_shapes: dict[int, tuple[tuple[int, ...], int, list[tuple[int, ...]]]] = {}
        self.work = 0  # steps of the broadcast check, all constraints together

    def refuse(self, where: Where, what: str, fix: str = "") -> NoReturn:
        _refuse(self.filename, self.kind, _render(where), what, fix)

    def entries(self, mapping: Any, where: str, depth: int) -> int:
        """The entries of a top-level dict, each within :data:`MAX_ENTRY_NODES`; the
        expanded size of them all."""
        total = 1
        for key, value in mapping.items():
            if type(key) is not str:
                self.refuse(where or "it", f"has a key of type {_type(key)}, not a name")
            _, size, nbytes = self.value(value, (where, "[", key), depth + 1)
            total += size
            self.referenced += nbytes
            if total > MAX_NODES:
                self.refuse(where or "it", f"holds more than {MAX_NODES} objects")
        return total

    def value(self, value: Any, where: Where, depth: int) -> tuple[int, int, int]:
        """``value``'s height, expanded size and expanded tensor bytes."""
        if type(value) in _SCALARS:
            return 0, 1, 0
        key = id(value)
        known = self.seen.get(key)
        if known is not None:
            if depth + known[0] > MAX_DEPTH:
                self.refuse(where, f"is nested more than {MAX_DEPTH} levels deep")
            return known
        if key in self.open:
            self.refuse(where, "refers back to an object that contains it (a cycle)")
        if depth > MAX_DEPTH:
            self.refuse(where, f"is nested more than {MAX_DEPTH} levels deep")
        kind = type(value)
        nbytes = 0
        if kind is dict:
            children = [(item, (where, "[", name)) for name, item in value.items()]
        elif kind is list or kind is tuple:
            children = [(item, (where, "[", index)) for index, item in enumerate(value)]
        elif kind is _Tensor:
            nbytes = self.tensor(value, where)
            children = []
        elif kind is _Object:
            children = [(item, (where, ".", name)) for name, item in self.state(value, where)]
        else:
            self.refuse(where, f"is {_describe(value)}")
        self.open.add(key)
        height, size = 0, 1
        for child, inner in children:
            child_height, child_size, child_bytes = self.value(child, inner, depth + 1)
            height = max(height, child_height + 1)
            size += child_size
            nbytes += child_bytes
            if size > MAX_ENTRY_NODES:
                self.refuse(
                    where,
                    f"expands to more than {MAX_ENTRY_NODES} objects (shared references "
                    "counted as the copies pyro and torch make of them)",
                )
        self.open.discard(key)
        self.seen[key] = (height, size, nbytes)
        return height, size, nbytes

    def tensor(self, tensor: _Tensor, where: Where) -> int:
        """Checks the tensor against its data; its bytes."""
        args = tensor.args
        if tensor.parameter:
            if not (len(args) == 3 and type(args[0]) is _Tensor and not args[0].parameter):
                self.refuse(where, "is a Parameter that does not wrap a tensor")
            if type(args[1]) is not bool or type(args[2]) is not _Hooks:
                self.refuse(where, "is a Parameter with hooks or no requires_grad flag")
            return self.tensor(args[0], where)
        if len(args) not in (6, 7):
            self.refuse(where, f"is a tensor rebuilt from {len(args)} arguments")
        storage, offset, size, stride, requires_grad, hooks = args[:6]
        if type(storage) is not _Storage:
            self.refuse(where, f"is a tensor whose storage is {_describe(storage)}")
        if type(requires_grad) is not bool or type(hooks) is not _Hooks:
            self.refuse(where, "is a tensor with backward hooks or no requires_grad flag")
        if len(args) == 7 and args[6] not in (None, {}):
            self.refuse(where, "is a tensor with metadata (a conjugate or negative view)")
        ints = (size, stride)
        if not all(type(shape) is tuple and all(type(n) is int for n in shape) for shape in ints):
            self.refuse(where, "is a tensor whose size or stride is not a tuple of integers")
        if len(size) != len(stride) or len(size) > 64 or type(offset) is not int or offset < 0:
            self.refuse(
                where,
                f"is a tensor of size {_dims(size)}, stride {_dims(stride)}, offset "
                f"{_short(offset)}",
            )
        numel, last, across = 1, offset, 1
        for extent, step in zip(size, stride, strict=True):
            if extent < 0 or step < 0 or (step == 0 and extent > 1):
                self.refuse(
                    where,
                    f"is a tensor of size {_dims(size)} and stride {_dims(stride)}: it repeats "
                    "its data (stride 0, as .expand() makes), and every operation on it costs "
                    "as if the file held all of it",
                    fix="If you saved an expanded tensor yourself, save .clone() of it.",
                )
            numel *= extent
            across *= max(extent, 1)
            last += (extent - 1) * step
        held = storage.numel
        if not numel and across > self.length:
            self.refuse(
                where,
                f"is an empty tensor of size {_dims(size)}: its other dimensions make "
                f"{across} elements, more than the file's {self.length} bytes (a constraint's "
                "transform or torch can make a tensor of that many elements from it)",
            )
        if numel and (last >= held or numel > held):
            self.refuse(
                where,
                f"is a tensor of size {_dims(size)} (stride {_dims(stride)}, offset {offset}) "
                f"over a storage of {held} elements: it needs data the file does not hold",
            )
        if not numel and offset > held:
            self.refuse(where, f"is an empty tensor at offset {offset} of {held} elements")
        return int(numel * _itemsize(storage.dtype))

    def state(self, obj: _Object, where: Where) -> list[tuple[str, Any]]:
        """A constraint's attributes: only names its class's constructor sets, none
        of them a method or another descriptor of the class."""
        cls, state = obj.cls, obj.state
        if state is None:
            return []
        allowed = self.attributes.get(cls)
        if allowed is None:
            allowed = self.attributes[cls] = _constructor_attributes(cls)
        for name in state:
            if type(name) is not str or name not in allowed or _is_descriptor(cls, name):
                self.refuse(
                    where,
                    f"is a {cls.__qualname__} with an attribute {_short(name)}, which its "
                    f"constructor does not set (it sets {sorted(allowed) or 'none'})",
                )
        return list(state.items())

    def fits(self, constraint: Any, param: _Tensor, where: Where) -> None:
        """No tensor of the constraint broadcasts past its parameter: the smallest
        shape that holds them all and the parameter holds no more elements than the
        parameter and those tensors themselves do.  Each distinct constraint is
        looked into once (its tensors' hull, what they hold), and all of that work
        counts against :data:`MAX_FITS_WORK`; then each parameter costs its rank."""
        shape = _shape(param)
        key = id(constraint)
        known = self.tensor_shapes.get(key)
        if known is None:
            known = self.tensor_shapes[key] = self.constraint_hull(constraint, where)
        tail, tensors_held, shapes = known
        if not shapes:
            return
        rank = max(len(shape), len(tail))
        hull = [1] * rank
        for each in (shape, tail):
            for axis, extent in enumerate(each, rank - len(each)):
                hull[axis] = max(hull[axis], extent)
        held = _numel(shape) + tensors_held
        if _numel(tuple(hull)) > held:
            listed = ", ".join(_dims(each) for each in shapes[:4])
            more = f" and {len(shapes) - 4} more" if len(shapes) > 4 else ""
            self.refuse(
                where,
                f"has tensors of shapes {listed}{more} for a parameter of shape "
                f"{_dims(shape)}: broadcast together they make {_numel(tuple(hull))} "
                f"elements from {held} in the file",
            )

    def constraint_hull(
        self, constraint: Any, where: Where
    ) -> tuple[tuple[int, ...], int, list[tuple[int, ...]]]:
        """The hull of the shapes of the distinct tensors within a (checked)
        constraint, their elements, and their shapes."""
        found: list[tuple[int, ...]] = []
        pending, visited = [constraint], set()
        hull: list[int] = []  # right-aligned: hull[-1] is the last axis
        held = 0
        while pending:
            item = pending.pop()
            self.work += 1
            if type(item) in _SCALARS or id(item) in visited:
                continue
            visited.add(id(item))
            if type(item) is _Tensor:
                shape = _shape(item)
                self.work += len(shape)
                found.append(shape)
                held += _numel(shape)
                if len(shape) > len(hull):
                    hull[:0] = [1] * (len(shape) - len(hull))
                start = len(hull) - len(shape)
                hull[start:] = map(max, hull[start:], shape)
            elif type(item) is _Object and item.state:
                pending.extend(item.state.values())
            elif type(item) in (list, tuple):
                pending.extend(item)
            elif type(item) is dict:
                pending.extend(item.values())
            if self.work > MAX_FITS_WORK:
                self.refuse(
                    where,
                    f"is one of constraints whose tensors take more than {MAX_FITS_WORK} "
                    "steps to compare with their parameters (distinct constraints that "
                    "share many tensors)",
                )
        return tuple(hull), held, found


def _render(where: Where) -> str:
    """A place in the state, written out (each key cut short)."""
    parts = []
    while isinstance(where, tuple):
        where, separator, key = where
        parts.append(f"[{_short(key)}]" if separator == "[" else f".{_short(key)[1:-1]}")
    return str(where) + "".join(reversed(parts))


def _short(value: Any) -> str:
    """A value for a message: a scalar's repr (cut short), else its type."""
    if type(value) is str and len(value) > 60:
        return repr(value[:60]) + "..."
    if type(value) in _SCALARS:
        text = repr(value)
        return text if len(text) <= 64 else text[:60] + "..."
    return _describe(value)


def _text(value: str) -> str:
    """A name from the file (a global's, a record's), for a message: escaped as a
    repr escapes it, without the quotes, cut short."""
    text = repr(value[:60])[1:-1]
    return text[:64] + "..." if len(value) > 60 or len(text) > 64 else text


def _dims(shape: tuple[int, ...]) -> str:
    """A size or stride from the file, for a message (cut short)."""
    text = str(shape[:17])
    return text if len(text) <= 120 and len(shape) <= 16 else text[:116] + "...)"


def _keys(mapping: dict[Any, Any]) -> str:
    """A dict's first few keys, for a message (each cut short)."""
    shown = [_short(key) for key in itertools.islice(mapping, 4)]
    return "[" + ", ".join(shown) + (", ...]" if len(mapping) > 4 else "]")


def _shape(tensor: _Tensor) -> tuple[int, ...]:
    args = tensor.args[0].args if tensor.parameter else tensor.args
    return tuple(args[2])


def _numel(shape: tuple[int, ...]) -> int:
    numel = 1
    for extent in shape:
        numel *= extent
    return numel


def _constructor_attributes(cls: type) -> frozenset[str]:
    """The attribute names that the constructors of ``cls`` and its bases assign
    (``self.name = ...``): all a constraint's ``__dict__`` ever holds."""
    import dis

    names: set[str] = set()
    for klass in cls.__mro__:
        init = vars(klass).get("__init__")
        code = getattr(init, "__code__", None)
        if code is not None:
            names.update(
                ins.argval for ins in dis.get_instructions(code) if ins.opname == "STORE_ATTR"
            )
    return frozenset(name for name in names if not name.startswith("__"))


def _is_descriptor(cls: type, name: str) -> bool:
    import inspect

    found = inspect.getattr_static(cls, name, None)
    return callable(found) or hasattr(type(found), "__get__") or hasattr(type(found), "__set__")


def _describe(value: Any) -> str:
    if isinstance(value, _Global):
        return f"{_text(value.name)} itself (not called)"
    if type(value) is _Hooks:
        return "a collections.OrderedDict (only a tensor's empty hooks may be one)"
    if type(value) is _Storage:
        return "a bare storage"
    return f"a {_type(value)}"


def _check_store(check: _Check, state: Any) -> None:
    """``{"params": {name: tensor}, "constraints": {name: constraint}}``, as
    ``ParamStoreDict.get_state()`` makes it."""
    if type(state) is not dict or set(state) != {"params", "constraints"}:
        keys = f" with keys {_keys(state)}" if type(state) is dict else ""
        check.refuse(
            "",
            f"is {_describe(state)}{keys}, not a dict with the keys 'params' and 'constraints'",
        )
    params, constraints = state["params"], state["constraints"]
    for key, value in (("params", params), ("constraints", constraints)):
        if type(value) is not dict:
            check.refuse(key, f"is {_describe(value)}, not a dict of parameter names")
    for name, param in params.items():
        if type(param) is not _Tensor:
            check.refuse(("params", "[", name), f"is {_describe(param)}")
    for name, constraint in constraints.items():
        where: Where = ("constraints", "[", name)
        if type(constraint) is not _Object:
            check.refuse(where, f"is {_describe(constraint)}")
        if name not in params:
            check.refuse(where, "constrains a parameter the file does not hold")
    total = check.entries(params, "params", 1) + check.entries(constraints, "constraints", 1)
    if total > MAX_NODES:
        check.refuse("", f"holds more than {MAX_NODES} objects")
    if len(constraints) != len(params):  # every constraint's parameter is in params
        name = next(name for name in params if name not in constraints)
        check.refuse(
            ("params", "[", name),
            "has no constraint (pyro writes one for every parameter, constraints.real "
            "for one declared without)",
        )
    for name, constraint in constraints.items():
        check.fits(constraint, params[name], ("constraints", "[", name))


def _check_optim(check: _Check, state: Any) -> None:
    """``{param name: optimizer or scheduler state_dict()}``, as
    ``PyroOptim.get_state()`` makes it."""
    if type(state) is not dict:
        check.refuse("", f"is {_describe(state)}, not a dict of parameter names")
    for name, value in state.items():
        if type(value) is not dict:
            check.refuse(("state", "[", name), f"is {_describe(value)}, not a state_dict()")
    check.entries(state, "state", 0)
    if check.referenced > REFERENCED * check.length:
        check.refuse(
            "",
            f"refers to {check.referenced} bytes of tensors (shared references counted as "
            f"the copies torch's Optimizer.load_state_dict makes of them), more than "
            f"{REFERENCED} times the file's {check.length} bytes",
        )


# ---------------------------------------------------------------------------
# Building what was checked


class _Build:
    """The checked state made real: each storage read once, straight into memory
    torch allocated for it, then moved as ``map_location`` says; each shared object
    made once."""

    def __init__(self, archive: _Archive, map_location: Any) -> None:
        import torch

        self.torch = torch
        self.archive = archive
        self.map_location = map_location
        self.storages: dict[str, Any] = {}
        self.made: dict[int, Any] = {}

    def value(self, value: Any) -> Any:
        if type(value) in _SCALARS:
            return value
        key = id(value)
        if key in self.made:
            return self.made[key]
        kind = type(value)
        out: Any
        if kind is dict:
            out = self.made[key] = {}
            for name, item in value.items():
                out[name] = self.value(item)
        elif kind is list:
            out = self.made[key] = []
            out.extend(self.value(item) for item in value)
        elif kind is tuple:
            out = self.made[key] = tuple(self.value(item) for item in value)
        elif kind is _Tensor:
            out = self.made[key] = self.tensor(value)
        else:  # an _Object: _Check let nothing else through
            cls = value.cls
            out = self.made[key] = cls.__new__(cls)
            state = {name: self.value(item) for name, item in (value.state or {}).items()}
            if getattr(cls, "__setstate__", None) is getattr(object, "__setstate__", None):
                out.__dict__.update(state)
            else:  # a class of the user's own, allowed by them
                out.__setstate__(state)
        return out

    def tensor(self, tensor: _Tensor) -> Any:
        torch = self.torch
        if tensor.parameter:
            data, requires_grad = tensor.args[:2]
            return torch.nn.Parameter(self.tensor(data), requires_grad)
        storage, offset, size, stride, requires_grad = tensor.args[:5]
        untyped = self.storage(storage)
        built = torch.empty((0,), dtype=storage.dtype, device=untyped.device)
        built.set_(untyped, offset, size, stride)
        if requires_grad:
            built.requires_grad_(True)
        return built

    def storage(self, storage: _Storage) -> Any:
        if storage.key in self.storages:
            return self.storages[storage.key]
        import ctypes

        torch = self.torch
        nbytes = storage.numel * _itemsize(storage.dtype)
        data = torch.empty((nbytes,), dtype=torch.uint8)
        if nbytes:
            self.archive.read_into(
                f"data/{storage.key}", (ctypes.c_char * nbytes).from_address(data.data_ptr())
            )
        untyped = data.untyped_storage()
        location, where = storage.location, self.map_location
        if where is None:
            restored = untyped if location == "cpu" else self.restore(untyped, location)
        elif isinstance(where, dict):
            restored = self.restore(untyped, where.get(location, location))
        elif isinstance(where, (str, bytes, torch.device)):
            target = where.decode() if isinstance(where, bytes) else str(where)
            restored = self.restore(untyped, target)
        else:
            restored = where(untyped, location)
            if restored is None:
                restored = self.restore(untyped, location)
        if isinstance(restored, torch.storage.TypedStorage):
            restored = restored._untyped_storage
        if not isinstance(restored, torch.UntypedStorage):
            raise TypeError(f"map_location returned {_type(restored)}, not a storage")
        self.storages[storage.key] = restored
        return restored

    def restore(self, storage: Any, location: str) -> Any:
        restore = self.torch.serialization.default_restore_location
        return restore(storage, location)  # type: ignore[no-untyped-call]


# ---------------------------------------------------------------------------
# Loading


def _allowed(kind: _Kind) -> dict[str, type]:
    """This load's constraint classes, by the name a file gives them: the fixed
    :data:`ALLOWED`, and the constraint classes the user allowed in torch's own
    allowlist (read, never changed)."""
    if not kind.constraints:
        return {}
    import torch.serialization

    found = {f"{cls.__module__}.{cls.__qualname__}": cls for cls in safe_globals()}
    users = getattr(torch.serialization, "get_safe_globals", None)  # torch 2.4+
    for entry in users() if users is not None else ():
        cls, name = entry if isinstance(entry, tuple) else (entry, None)
        if isinstance(cls, type) and _is_constraint_class(cls):
            found[name or f"{cls.__module__}.{cls.__qualname__}"] = cls
    return found


def _load(filename: Any, map_location: Any, kind: _Kind) -> Any:
    with open(filename, "rb") as file:
        archive = _Archive(file, filename, kind)
        data = archive.small("data.pkl", MAX_PICKLE)
        if data is None:
            archive.refuse("data.pkl", "is missing")
        state = _Unpickler(data, archive, _allowed(kind)).load()
        check = _Check(filename, kind, archive.length)
        (_check_store if kind is STORE else _check_optim)(check, state)
        try:
            return _Build(archive, map_location).value(state)
        except (RuntimeError, ValueError, TypeError, AssertionError, OSError) as error:
            # torch's own refusal of what the checks let through (a device this
            # machine lacks, say): the package's error, torch's chained.
            raise UntrustedContentError(
                f"pyro-pickle-fix could not load {str(filename)!r} as {kind.what}: torch "
                f"refused to build it: {type(error).__name__}: {error}. Nothing was loaded.",
                "",
            ) from error


def load_state(filename: Any, map_location: Any = None) -> Any:
    """A param-store file's state, for ``ParamStoreDict.set_state``.

    :class:`UntrustedGlobalError` if the file names anything beyond tensors, plain
    data and the allowed constraint classes; :class:`UntrustedContentError` if what
    it holds is not what pyro writes.  Either way nothing was built, and the param
    store is unchanged.
    """
    return _load(filename, map_location, STORE)


def load_optim_state(filename: Any, map_location: Any = None) -> Any:
    """An optimizer file's state (``PyroOptim.save()``), for ``PyroOptim.set_state``;
    refused as :func:`load_state` refuses."""
    return _load(filename, map_location, OPTIM)


def _itemsize(dtype: Any) -> int:
    """Bytes per element of ``dtype`` (``torch.dtype.itemsize`` from torch 2.1 on;
    torch 2.0 has none)."""
    size = getattr(dtype, "itemsize", None)
    if size is None:
        import torch

        size = torch.empty((), dtype=dtype).element_size()
    return int(size)
