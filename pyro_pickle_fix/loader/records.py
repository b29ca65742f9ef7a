"""The loader's records: what the unpickler hands out for what a file names (a
storage, a tensor, a constraint object, a global), inert until :mod:`.build` makes
them real, and the plain values a state may hold beside them."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class Storage:
    """A storage the pickle declares: checked against its record, read only when the
    whole state has been checked."""

    __slots__ = ("dtype", "key", "location", "numel")

    def __init__(self, key: str, dtype: Any, location: str, numel: int) -> None:
        self.key, self.dtype, self.location, self.numel = key, dtype, location, numel


class Tensor:
    """``_rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[,
    metadata])``, or ``_rebuild_parameter(tensor, requires_grad, hooks)`` or
    ``_rebuild_parameter_with_state(tensor, requires_grad, hooks, state)``
    (``parameter``), not yet built.  ``state`` is the Python attributes torch
    saved with it (its ``__dict__``): a Parameter's fourth argument, or what
    ``torch._tensor._rebuild_from_type_v2`` gives a plain tensor."""

    __slots__ = ("args", "parameter", "state")

    def __init__(self, args: tuple[Any, ...], parameter: bool, state: Any = None) -> None:
        self.args, self.parameter, self.state = args, parameter, state


class Object:
    """An instance of an allowed constraint class (NEWOBJ, then BUILD), not yet built."""

    __slots__ = ("cls", "state")

    def __init__(self, cls: type) -> None:
        self.cls: type = cls
        self.state: Any = None


class Counter:
    """``collections.Counter(counts)``, as a scheduler's state holds it
    (``MultiStepLR.milestones``), not yet built."""

    __slots__ = ("counts",)

    def __init__(self, counts: dict[Any, Any]) -> None:
        self.counts = counts


class Global:
    """What GLOBAL hands out: a marker, never the object it names."""

    __slots__ = ("name", "role", "value")

    def __init__(self, name: str, role: str, value: Any = None) -> None:
        self.name, self.role, self.value = name, role, value

    def __repr__(self) -> str:
        return self.name


class Hooks:
    """``collections.OrderedDict()``: a tensor's (always empty) backward hooks."""

    __slots__ = ()


#: Dict keys: names, indices, and the two flags and None.  No float key, and an int
#: key is an index below :data:`MAX_INT_KEY` or a dim from :data:`MIN_INT_KEY`: keys
#: of distinct hashes (but -1 and -2) that share few low bits, so that no dict the
#: file makes costs more than linear time (Python's hash of an int is the int
#: modulo 2**61 - 1: a file could make every key collide).
KEYS = (str, int, bool, type(None))
SCALARS = frozenset((str, int, float, bool, type(None)))


def itemsize(dtype: Any) -> int:
    """Bytes per element of ``dtype`` (``torch.dtype.itemsize`` from torch 2.1 on;
    torch 2.0 has none)."""
    size = getattr(dtype, "itemsize", None)
    if size is None:
        import torch

        size = torch.empty((), dtype=dtype).element_size()
    return int(size)
