"""Stage 4: the build.  The checked state made real: each storage read once,
straight into memory torch allocated for it, then moved as ``map_location``
says; each shared object made once.  Nothing here decides what is allowed."""

from __future__ import annotations

from .messages import type_name
from .records import SCALARS, Counter, Tensor, itemsize

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .archive import Archive
    from .records import Storage


class Build:
    """The checked state made real: each storage read once, straight into memory
    torch allocated for it, then moved as ``map_location`` says; each shared object
    made once."""

    def __init__(self, archive: Archive, map_location: Any, shared: set[int]) -> None:
        import torch

        self.torch = torch
        self.archive = archive
        self.map_location = map_location
        self.storages: dict[str, Any] = {}
        self.shared = shared  # the ids of the objects the pickle refers to again
        self.made: dict[int, Any] = {}  # of those, what each was made into

    def value(self, value: Any) -> Any:
        if type(value) in SCALARS:
            return value
        key = id(value)
        if key in self.made:
            return self.made[key]
        kind = type(value)
        out: Any
        if kind is dict:
            out = {}
            for name, item in value.items():
                out[name] = self.value(item)
        elif kind is list:
            out = []
            out.extend(self.value(item) for item in value)
        elif kind is tuple:
            out = tuple(self.value(item) for item in value)
        elif kind is Tensor:
            out = self.tensor(value)
        elif kind is Counter:
            import collections

            out = collections.Counter(value.counts)
        else:  # an Object: Check let nothing else through
            cls = value.cls
            out = cls.__new__(cls)
            state = {name: self.value(item) for name, item in (value.state or {}).items()}
            if getattr(cls, "__setstate__", None) is getattr(object, "__setstate__", None):
                out.__dict__.update(state)
            else:  # a class of the user's own, allowed by them
                out.__setstate__(state)
        if key in self.shared:  # (the checks refused every cycle)
            self.made[key] = out
        return out

    def tensor(self, tensor: Tensor) -> Any:
        torch = self.torch
        if tensor.parameter:
            data, requires_grad = tensor.args[:2]
            built = torch.nn.Parameter(self.tensor(data), requires_grad)
        else:
            built = self.dense(tensor)
        # torch's _set_obj_state: names Check found to be plain attributes (no
        # property or slot of torch's), values checked as the rest of the state.
        for name, item in (tensor.state or {}).items():
            setattr(built, name, self.value(item))
        return built

    def dense(self, tensor: Tensor) -> Any:
        torch = self.torch
        storage, offset, size, stride, requires_grad = tensor.args[:5]
        untyped = self.storage(storage)
        built = torch.empty((0,), dtype=storage.dtype, device=untyped.device)
        built.set_(untyped, offset, size, stride)
        if requires_grad:
            built.requires_grad_(True)
        return built

    def storage(self, storage: Storage) -> Any:
        if storage.key in self.storages:
            return self.storages[storage.key]
        import ctypes

        torch = self.torch
        nbytes = storage.numel * itemsize(storage.dtype)
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
            raise TypeError(f"map_location returned {type_name(restored)}, not a storage")
        self.storages[storage.key] = restored
        return restored

    def restore(self, storage: Any, location: str) -> Any:
        restore = self.torch.serialization.default_restore_location
        return restore(storage, location)  # type: ignore[no-untyped-call]
