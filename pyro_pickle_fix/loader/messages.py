"""How a refusal reads: what is loaded (:class:`Kind`), the errors a load raises
(a file that is not whole: :func:`damaged`; a file of another kind:
:func:`other_kind`; anything else: :func:`refuse` and :func:`refuse_global`), and
every value from the file cut short before it goes into a message.  A message
names no class of the loader's own, and offers ``weights_only=False`` only where
torch's load would read the file."""

from __future__ import annotations

import itertools
import sys
from types import MappingProxyType

from ..errors import DamagedFileError, UntrustedContentError, UntrustedGlobalError
from .records import SCALARS, Counter, Global, Hooks, Object, Storage, Tensor

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NoReturn

    #: Where in the state: a top-level name, or (the container's place, "[" or
    #: ".", key), written out only for a refusal (:func:`render`).
    Where = str | tuple[Any, str, Any]


class Kind:
    """What is loaded: its name in messages, what it may hold, and how a user loads
    a file they trust."""

    def __init__(
        self, what: str, needs: str, trusted: str, io: tuple[str, str], *, constraints: bool
    ) -> None:
        self.what = what
        self.needs = needs
        self.trusted = trusted
        self.writer, self.reader = io  # what writes this kind of file, and what reads it
        self.constraints = constraints


STORE = Kind(
    "a param-store file",
    "a tensor rebuild, a plain container nor one of the constraint classes that "
    "pyro_pickle_fix.safe_globals() lists",
    "pyro.get_param_store().set_state(torch.load(path, weights_only=False))",
    ("pyro.get_param_store().save(path)", "pyro.get_param_store().load(path)"),
    constraints=True,
)
OPTIM = Kind(
    "an optimizer file",
    "a tensor rebuild nor a plain container",
    "optim.set_state(torch.load(path, weights_only=False))",
    (
        "optim.save(path)",
        "optim.load(path), with a pyro.optim optimizer made as the one that saved it",
    ),
    constraints=False,
)

#: What each kind of file looks like, for a message about a file of another kind.
LOOKS = MappingProxyType(
    {
        "store": "a param-store file (what pyro.get_param_store().save(path) writes: the "
        "parameters and their constraints)",
        "optim": "an optimizer file (what a pyro.optim optimizer's save(path) writes: a "
        "state_dict() for each parameter's name)",
    }
)


def refuse(filename: Any, kind: Kind, where: str, what: str, fix: str = "") -> NoReturn:
    """What the file holds that pyro never writes: ``where`` (a place in the state,
    a record; empty: the file) ``what`` (a clause that reads on from it)."""
    raise UntrustedContentError(
        f"pyro-pickle-fix refused to load {str(filename)!r} as {kind.what}: {where or 'it'} "
        f"{what}. pyro never writes that. Nothing was loaded. "
        f"{fix + ' ' if fix else ''}If you trust the whole file, load it yourself: "
        f"{kind.trusted}.",
        where,
    )


def damaged(filename: Any, kind: Kind, where: str, what: str) -> NoReturn:
    """A file that is not whole: no load can read it, so none is offered."""
    raise DamagedFileError(
        f"pyro-pickle-fix could not load {str(filename)!r} as {kind.what}: the file is "
        f"damaged: {where or 'it'} {what}. Nothing was loaded. No other load can read it "
        "either: save it again from the program that made it (a copy, a download or a "
        "save that was interrupted leaves a file cut short).",
        where,
    )


def other_kind(filename: Any, kind: Kind, looks: str, reader: str) -> NoReturn:
    """A file of another kind, given to this load: what it looks like, and the load
    that reads it."""
    raise UntrustedContentError(
        f"pyro-pickle-fix did not load {str(filename)!r} as {kind.what}: it is {looks}, "
        f"not {kind.what}. Nothing was loaded. {reader}",
        "",
    )


#: The globals of torch's weights-only allowlist that are data and run no code of
#: the file's: a refusal says the file holds what pyro never writes there, not
#: that it could run code.
DATA_GLOBALS = frozenset(
    {
        "collections.Counter",
        "collections.OrderedDict",
        # pickle protocol 2 names the builtins module __builtin__
        *(
            f"{module}.{name}"
            for module in ("builtins", "__builtin__")
            for name in ("set", "frozenset", "complex", "bytearray", "slice")
        ),
        "torch.Size",
        "torch.device",
        *(
            f"torch.{dtype}"
            for dtype in [
                "float32",
                "float64",
                "float16",
                "bfloat16",
                "complex64",
                "complex128",
                "int64",
                "int32",
                "int16",
                "int8",
                "uint8",
                "bool",
            ]
        ),
    }
)

#: The top object of a pickle made by a global (the first thing in it), and what
#: the file is then, with the load that reads it.
_TOP_OBJECTS = MappingProxyType(
    {
        "collections.OrderedDict": (
            "a module's state_dict() (an OrderedDict of tensors, as torch.save("
            "guide.state_dict()) writes)",
            "Load it with guide.load_state_dict(torch.load(path, weights_only=True)), into "
            "a guide made as the one that saved it.",
        ),
        "torch._utils._rebuild_tensor_v2": (
            "a single tensor (as torch.save(tensor) writes)",
            "Load it with torch.load(path, weights_only=True).",
        ),
        "torch._utils._rebuild_parameter": (
            "a single Parameter (as torch.save(parameter) writes)",
            "Load it with torch.load(path, weights_only=True).",
        ),
    }
)


def top_object(filename: Any, kind: Kind, name: str) -> None:
    """If the top object of a file is made by ``name``, and that makes the file
    one of another kind (a state_dict(), a tensor, a whole module pickled), say so;
    else return."""
    if name in _TOP_OBJECTS:
        other_kind(filename, kind, *_TOP_OBJECTS[name])
    cls = imported_class(name)
    module = sys.modules.get("torch.nn")
    base = getattr(module, "Module", None)
    if cls is not None and isinstance(base, type) and issubclass(cls, base):
        other_kind(
            filename,
            kind,
            f"a whole {cls.__name__} object, pickled (as torch.save(guide) writes)",
            "Only torch.load(path, weights_only=False) reads a whole object, and it runs "
            "any code the file names: use it only on a file you made yourself. This load "
            f"reads what {kind.writer} writes.",
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


def refuse_global(
    filename: Any, kind: Kind, name: str, allowed: dict[str, type] | None = None
) -> NoReturn:
    advice = ""
    shown = escaped(name)
    cls = imported_class(name)
    if kind.constraints and cls is not None and cls in (allowed or {}).values():
        known = ", ".join(sorted(other for other, each in (allowed or {}).items() if each is cls))
        advice = (
            f" {shown} is another name of {known}, which this load allows under that "
            "name: the file names it under a name pyro never writes."
        )
    elif kind.constraints and cls is not None and is_constraint_class(cls):
        advice = (
            f" {shown} is a constraint class this process has imported: if you trust it, "
            f"allow it first: torch.serialization.add_safe_globals([{cls.__name__}])."
        )
    if name in _TENSOR_GLOBALS:
        why = (
            "which makes a kind of tensor that pyro's files never hold (only dense "
            "tensors whose data is in the file, and Parameters of them, load)"
        )
    elif not kind.constraints and cls is not None and is_constraint_class(cls):
        why = (
            f"which is a constraint class: {kind.what} of pyro's never holds one (pyro "
            "writes constraints in the param-store file only)"
        )
    elif name in DATA_GLOBALS:
        why = f"which is data that {kind.what} of pyro's never holds (it runs no code)"
    else:
        why = f"which is neither {kind.needs}, so loading it could run code named in the file"
    raise UntrustedGlobalError(
        f"pyro-pickle-fix refused to load {str(filename)!r} as {kind.what}: it needs "
        f"the global {short(name)}, {why}. Nothing was loaded.{advice} If you trust the "
        f"whole file, load it yourself: {kind.trusted}.",
        name,
    )


def imported_class(name: str) -> type | None:
    """The class ``module.Name`` names, if its module is imported already (nothing
    is imported for a name a file gives)."""
    module_name, _, attribute = name.rpartition(".")
    module = sys.modules.get(module_name)
    found = vars(module).get(attribute) if module is not None else None
    return found if isinstance(found, type) else None


def is_constraint_class(cls: type) -> bool:
    constraints = sys.modules.get("torch.distributions.constraints")
    base = getattr(constraints, "Constraint", None)
    return isinstance(base, type) and issubclass(cls, base) and cls is not base


def type_name(value: Any) -> str:
    """What a value is, for a message: a record of the loader's own by what the file
    made it of (never the record's own class)."""
    cls = type(value)
    if cls is Object:
        cls = value.cls
    elif cls is Global:
        return f"{escaped(value.name)} itself"
    elif cls is Tensor:
        return "torch.nn.Parameter" if value.parameter else "torch.Tensor"
    elif cls in _RECORDS:
        return _RECORDS[cls]
    return f"{cls.__module__}.{cls.__qualname__}"


_RECORDS = MappingProxyType(
    {Hooks: "collections.OrderedDict", Storage: "storage", Counter: "collections.Counter"}
)


def render(where: Where) -> str:
    """A place in the state, written out (each key cut short)."""
    parts = []
    while isinstance(where, tuple):
        where, separator, key = where
        parts.append(f"[{short(key)}]" if separator == "[" else f".{short(key)[1:-1]}")
    return str(where) + "".join(reversed(parts))


def short(value: Any) -> str:
    """A value for a message: a scalar's repr (cut short), else its type."""
    if type(value) is str and len(value) > 60:
        return repr(value[:60]) + "..."
    if type(value) in SCALARS:
        text = repr(value)
        return text if len(text) <= 64 else text[:60] + "..."
    return describe(value)


def escaped(value: str) -> str:
    """A name from the file (a global's, a record's), for a message: escaped as a
    repr escapes it, without the quotes, cut short."""
    text = repr(value[:60])[1:-1]
    return text[:64] + "..." if len(value) > 60 or len(text) > 64 else text


def dims(shape: tuple[int, ...]) -> str:
    """A size or stride from the file, for a message (cut short)."""
    text = str(shape[:17])
    return text if len(text) <= 120 and len(shape) <= 16 else text[:116] + "...)"


def first_keys(mapping: dict[Any, Any]) -> str:
    """A dict's first few keys, for a message (each cut short)."""
    shown = [short(key) for key in itertools.islice(mapping, 4)]
    return "[" + ", ".join(shown) + (", ...]" if len(mapping) > 4 else "]")


def describe(value: Any) -> str:
    if isinstance(value, Global):
        return f"{escaped(value.name)} itself (not called)"
    if type(value) is Hooks:
        return "a collections.OrderedDict (only a tensor's empty hooks may be one)"
    if type(value) is Storage:
        return "a bare storage"
    return f"a {type_name(value)}"
