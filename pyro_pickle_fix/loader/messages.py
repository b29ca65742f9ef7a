"""How a refusal reads: what is loaded (:class:`Kind`), the two errors a load
raises, and every value from the file cut short before it goes into a message."""

from __future__ import annotations

import itertools
import sys

from ..errors import UntrustedContentError, UntrustedGlobalError
from .records import SCALARS, Global, Hooks, Storage

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NoReturn

    #: Where in the state: a top-level name, or (the container's place, "[" or
    #: ".", key), written out only for a refusal (:func:`render`).
    Where = str | tuple[Any, str, Any]


class Kind:
    """What is loaded: its name in messages, what it may hold, and how a user loads
    a file they trust."""

    def __init__(self, what: str, needs: str, trusted: str, *, constraints: bool) -> None:
        self.what = what
        self.needs = needs
        self.trusted = trusted
        self.constraints = constraints


STORE = Kind(
    "a param-store file",
    "a tensor rebuild, a plain container or one of the constraint classes that "
    "pyro_pickle_fix.safe_globals() lists",
    "pyro.get_param_store().set_state(torch.load(path, weights_only=False))",
    constraints=True,
)
OPTIM = Kind(
    "an optimizer file",
    "a tensor rebuild or a plain container",
    "optim.set_state(torch.load(path, weights_only=False))",
    constraints=False,
)


def refuse(filename: Any, kind: Kind, where: str, what: str, fix: str = "") -> NoReturn:
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
    cls = type(value)
    return f"{cls.__module__}.{cls.__qualname__}"


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
