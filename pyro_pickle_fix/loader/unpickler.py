"""Stage 2: the unpickler.  The opcodes of pickle protocol 2 that ``torch.save``
writes, and nothing else: what a file names becomes an inert record
(:mod:`.records`), never the object it names, and every storage it declares is
checked against its record in the archive.  What it may allocate is bounded by
:data:`MAX_PICKLE` and :data:`MAX_OBJECTS`."""

from __future__ import annotations

import pickle
import re
import struct

from .allowed import ALLOWED, allowed_for
from .messages import (
    LOOKS,
    STORE,
    describe,
    other_kind,
    refuse,
    refuse_global,
    short,
    top_object,
    type_name,
)
from .records import KEYS, Counter, Global, Hooks, Object, Storage, Tensor, itemsize

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NoReturn

    from .archive import Archive
    from .messages import Kind

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
#: A negative int dict key is a dim, at least this: pyro's plates key
#: ``param._pyro_subsample`` by dim (``{-1: indices}``), and no tensor has more
#: than 64.  Each hashes to itself but -1, which CPython hashes as -2 (-1 is its
#: error value): at most two keys of a dict share a hash, so the argument above
#: still holds (a lookup compares a bounded number of equal hashes).
MIN_INT_KEY = -64

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
#: torch's rebuilds of a dense tensor, a Parameter, and a Parameter that carries
#: Python attributes (``param.name = value``: torch saves its ``__dict__``).
_REBUILDS = ("_rebuild_tensor_v2", "_rebuild_parameter", "_rebuild_parameter_with_state")
#: A plain tensor that carries Python attributes (``tensor.name = value``, and
#: pyro's ``_pyro_subsample``): torch writes ``_rebuild_from_type_v2(func, type,
#: args, state)`` (``Tensor.__reduce_ex__``), ``func`` its dense rebuild and
#: ``type`` the tensor's own class, ``torch.Tensor`` (a Parameter has a
#: ``__reduce_ex__`` of its own, :data:`_REBUILDS`).
_FROM_TYPE = "torch._tensor._rebuild_from_type_v2"
_LOCATION = re.compile(r"(cpu|cuda|mps|xpu)(:[0-9]{1,4})?")


class NamesConstraint(Exception):
    """An optimizer file's pickle names a constraint class of pyro's (``name``)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def refuse_constraint(data: bytes, archive: Archive, name: str) -> NoReturn:
    """An optimizer load whose pickle names the constraint class ``name``: a
    param-store file (read as one, its keys 'params' and 'constraints') is said
    to be one, with the load that reads it; any other file is refused for the
    global, as any other global is."""
    try:
        state = Unpickler(data, archive, allowed_for(STORE), STORE).load()
    except pickle.UnpicklingError:
        state = None
    if type(state) is dict and set(state) == {"params", "constraints"}:
        other_kind(archive.filename, archive.kind, LOOKS["store"], f"Load it with {STORE.reader}.")
    refuse_global(archive.filename, archive.kind, name)


class Unpickler:
    """The opcodes of pickle protocol 2 that ``torch.save`` writes, and nothing
    else; what a GLOBAL names only through :meth:`find_class`."""

    def __init__(
        self, data: bytes, archive: Archive, allowed: dict[str, type], kind: Kind | None = None
    ) -> None:
        self.data = data
        self.archive = archive
        self.kind = kind or archive.kind  # what it is read as
        self.allowed = allowed  # constraint classes, by module.qualname: this load's own
        self.storages: dict[str, Storage] = {}
        self.objects = 0
        #: The ids of the objects the pickle refers to again (a memo GET, the only
        #: way it can): only these can be reached twice, or be part of a cycle, so
        #: only these are remembered by the checks and the build.
        self.shared: set[int] = set()

    def refuse(self, what: str) -> NoReturn:
        refuse(self.archive.filename, self.kind, "its pickle", what)

    def find_class(self, module: str, name: str) -> Global:
        dotted = f"{module}.{name}"
        if module == "torch._utils" and name in _REBUILDS:
            return Global(dotted, name)
        if dotted == _FROM_TYPE:
            return Global(dotted, "from_type")
        if dotted == "torch.Tensor":
            return Global(dotted, "tensor_type")
        if dotted == "collections.OrderedDict":
            return Global(dotted, "hooks")
        if dotted == "collections.Counter" and not self.kind.constraints:
            return Global(dotted, "counter")  # a scheduler's milestones (MultiStepLR)
        if module == "torch" and name in _STORAGE_TYPES:
            import torch

            return Global(dotted, "storage", getattr(torch, _STORAGE_TYPES[name]))
        cls = self.allowed.get(dotted) if self.kind.constraints else None
        if cls is not None:
            return Global(dotted, "class", cls)
        if not self.kind.constraints and dotted in ALLOWED:  # a constraint of pyro's
            # A param-store file, or some other file that holds constraints (a
            # checkpoint with the store's state in it): only the whole pickle says.
            raise NamesConstraint(dotted)
        refuse_global(self.archive.filename, self.kind, dotted, self.allowed)

    def persistent_load(self, pid: Any) -> Storage:
        if not (type(pid) is tuple and len(pid) == 5 and pid[0] == "storage"):
            self.refuse(f"declares a persistent object ({describe(pid)}) that is not a storage")
        _, storage_type, key, location, numel = pid
        if not (isinstance(storage_type, Global) and storage_type.role == "storage"):
            self.refuse(f"declares storage {short(key)} of type {describe(storage_type)}")
        if type(key) is not str or type(numel) is not int or numel < 0:
            self.refuse(f"declares a storage with key {short(key)} and size {short(numel)}")
        if type(location) is not str or not _LOCATION.fullmatch(location):
            self.refuse(
                f"declares storage {short(key)} on device {short(location)}, which holds no data "
                "in the file (pyro saves cpu, cuda, mps or xpu tensors)"
            )
        dtype = storage_type.value
        known = self.storages.get(key)
        if known is not None:
            if (known.dtype, known.numel, known.location) != (dtype, numel, location):
                self.refuse(f"declares storage {short(key)} twice, differently")
            return known
        record = f"data/{key}"
        if record not in self.archive.records:
            self.refuse(
                f"declares storage {short(key)}, which has no record {short(record)} in the file"
            )
        size = self.archive.records[record][1]
        width = itemsize(dtype)
        if size != numel * width:
            self.refuse(
                f"declares storage {short(key)} as {numel} x {dtype} ({numel * width} bytes), "
                f"but its record holds {size} bytes"
            )
        storage = self.storages[key] = Storage(key, dtype, location, numel)
        return storage

    def made(self) -> None:
        self.objects += 1
        if self.objects > MAX_OBJECTS:
            self.refuse(f"makes more than {MAX_OBJECTS} objects")

    def reduce(self, func: Any, args: Any) -> Any:
        if not isinstance(func, Global) or type(args) is not tuple:
            self.refuse(f"calls {type_name(func)} (REDUCE of something that is not a function)")
        if func.role in _REBUILDS:
            state = args[3] if func.role == "_rebuild_parameter_with_state" and args[3:] else None
            return Tensor(args, func.role != "_rebuild_tensor_v2", state)
        if func.role == "from_type":
            return self.from_type(args)
        if func.role == "tensor_type":  # torch.Tensor(n): n elements of freed memory
            refuse_global(self.archive.filename, self.kind, func.name, self.allowed)
        if func.role == "hooks" and args == ():
            return Hooks()
        if func.role == "counter" and len(args) == 1 and type(args[0]) is dict:
            return Counter(args[0])
        self.refuse(f"calls {func.name} with {len(args)} arguments, which torch.save never writes")

    def from_type(self, args: tuple[Any, ...]) -> Tensor:
        """``_rebuild_from_type_v2(func, torch.Tensor, args, state)``: the dense
        tensor ``func(*args)`` with the attributes ``state`` (checked by
        :meth:`.checks.Check.tensor_attributes`)."""
        if not (
            len(args) == 4
            and isinstance(args[0], Global)
            and args[0].role == "_rebuild_tensor_v2"
            and isinstance(args[1], Global)
            and args[1].role == "tensor_type"
            and type(args[2]) is tuple
        ):
            self.refuse(
                f"calls {_FROM_TYPE} with {describe(args)}, which torch.save writes only for "
                "a tensor of torch.Tensor"
            )
        return Tensor(args[2], False, args[3])

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
                    self.shared.add(id(stack[-1]))
                    pos += 1
                elif op == 0x6A:  # j LONG_BINGET
                    stack.append(memo[unpack_from("<I", data, pos)[0]])
                    self.shared.add(id(stack[-1]))
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
                    if pos == 3:  # the pickle's top object: is it a file of another kind?
                        top_object(self.archive.filename, self.kind, f"{module}.{name}")
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
                    if isinstance(cls, Global) and cls.role == "tensor_type":
                        refuse_global(self.archive.filename, self.kind, cls.name, self.allowed)
                    if not (isinstance(cls, Global) and cls.role == "class" and args == ()):
                        self.refuse(f"makes an object of {describe(cls)} with arguments")
                    stack[-1] = Object(cls.value)
                elif op == 0x62:  # b BUILD
                    state = stack.pop()
                    target = stack[-1]
                    if type(target) is not Object or target.state is not None:
                        self.refuse(f"sets the state of {type_name(target)}")
                    if type(state) is not dict:
                        given = type_name(state)
                        self.refuse(f"gives {target.cls.__qualname__} a state of {given}")
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
            self.refuse(f"sets items on {type_name(target)}")
        for index in range(0, len(items), 2):
            key = items[index]
            if type(key) not in KEYS:
                self.refuse(f"has a dict key of type {type_name(key)}")
            if type(key) is int and not MIN_INT_KEY <= key < MAX_INT_KEY:
                self.refuse(
                    f"has the dict key {short(key)} (pyro's files key by name, and torch's "
                    f"optimizer state by an index from 0 to {MAX_INT_KEY - 1}, pyro's plates "
                    f"by a dim from {MIN_INT_KEY} to -1)"
                )
            target[key] = items[index + 1]

    def target_list(self, target: Any) -> list[Any]:
        if type(target) is not list:
            self.refuse(f"appends to {type_name(target)}")
        return target
