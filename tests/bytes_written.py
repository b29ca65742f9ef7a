"""What one interpreter writes for each object the suite knows, along pickle
protocols 2-5 and its default, ``torch.save`` and dill: ``python bytes_written.py`` prints JSON
``{"object / path": digest or "cannot write: error"}``.

The tests run it twice, with the fix off (stock pyro) and on, and compare.  Each
object is built fresh from the same seed for each path, because stock changes its
object when it writes it.  Masked, because stock itself differs run to run: the
addresses that plain pickle embeds for each storage (a persistent id numbers them
instead, and the storage bytes are digested), torch.save's random
``serialization_id`` record, and whether an equal string is written again or
referred to (that depends on which equal string objects the process happens to
share: stock's own bytes for the same object differ with what ran before it).
"""

from __future__ import annotations

import gc
import hashlib
import io
import json
import pickle
import pickletools
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import pyro
import torch
from guides import KINDS, build

from pyro_pickle_fix.diagnostics import tutorial


class _Pickler(pickle.Pickler):
    """pickle, but each storage is a numbered persistent id and its bytes are digested."""

    def __init__(self, file: io.BytesIO, protocol: int | None) -> None:
        super().__init__(file, protocol)
        self.storages: dict[int, int] = {}
        self.digest = hashlib.sha256()

    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, torch.storage.TypedStorage):
            obj = obj._untyped_storage
        if not isinstance(obj, torch.UntypedStorage):
            return None
        key = obj._cdata
        if key not in self.storages:
            self.storages[key] = len(self.storages)
            self.digest.update(bytes(obj.tolist()))
        return ("storage", self.storages[key])


_STRINGS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"}
_PUTS = {"MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"}
_GETS = {"GET", "BINGET", "LONG_BINGET"}


def canonical(data: bytes) -> str:
    """A digest of the opcodes of a pickle, with each string written in place and
    the other memo entries numbered in order (frames left out)."""
    digest = hashlib.sha256()
    memo: dict[int, Any] = {}
    others = 0  # memo entries that are not strings, numbered in order
    previous = None
    for opcode, argument, _ in pickletools.genops(data):
        name = opcode.name
        if name in _PUTS:
            index = len(memo) if name == "MEMOIZE" else argument
            string = previous[1] if previous and previous[0] in _STRINGS else None
            if string is not None:
                memo[index], item = ("str", string), None
            else:
                memo[index], item = ("memo", others), ("put", others)
                others += 1
        elif name in _GETS:
            item = memo[argument] if memo[argument][0] == "str" else ("get", memo[argument][1])
        elif name in _STRINGS:
            item = ("str", argument)
        elif name == "FRAME":
            item = None
        else:
            item = (name, argument)
        previous = (name, argument)
        if item is not None:
            digest.update(repr(item).encode())
    return digest.hexdigest()


def _pickled(protocol: int | None) -> Callable[[Any], str]:
    def write(obj: Any) -> str:
        buffer = io.BytesIO()
        pickler = _Pickler(buffer, protocol)
        pickler.dump(obj)
        return canonical(buffer.getvalue()) + pickler.digest.hexdigest()[:16]

    return write


def _zip_digest(data: bytes) -> str:
    digest = hashlib.sha256()
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for name in archive.namelist():
            if name.endswith("serialization_id"):
                continue
            data = archive.read(name)
            digest.update(name.encode() + b"\0")
            digest.update(canonical(data).encode() if name.endswith(".pkl") else data)
    return digest.hexdigest()


def _torch_saved(obj: Any) -> str:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return _zip_digest(buffer.getvalue())


def _dilled(obj: Any) -> str:
    """dill, which (unlike pickle) can write a weakref: for these objects stock pops
    pyro's weakref before they are written, so the fix must write the same."""
    import dill

    class Pickler(dill.Pickler):  # type: ignore[misc]
        persistent_id = _Pickler.persistent_id

    buffer = io.BytesIO()
    pickler = Pickler(buffer, 4)
    pickler.storages, pickler.digest = {}, hashlib.sha256()
    pickler.dump(obj)
    return canonical(buffer.getvalue()) + pickler.digest.hexdigest()[:16]


PATHS: dict[str, Callable[[Any], str]] = {
    **{f"pickle{p}": _pickled(p) for p in range(2, 6)},
    # pickle.dumps(obj), as most users call it: protocol 4 up to Python 3.13, 5 from 3.14.
    "pickle, default protocol": _pickled(None),
    "torch.save": _torch_saved,
    "dill": _dilled,
}


def _kind(kind: str) -> Callable[[], Any]:
    # One SVI step sets up everything a save writes (prototype trace, parameters).
    return lambda: build(kind, steps=1)[1]


def _tutorial() -> Any:
    return tutorial.trained_guide()[0]


def _store() -> Any:
    build("AutoNormal", steps=1)
    pyro.param("positive", torch.ones(2), constraint=torch.distributions.constraints.positive)
    return pyro.get_param_store()


OBJECTS: dict[str, Callable[[], Any]] = {
    **{kind: _kind(kind) for kind in sorted(KINDS)},
    "tutorial EasyGuide": _tutorial,
    "param store get_state()": lambda: _store().get_state(),
}


def written() -> dict[str, str]:
    found = {}
    for name, make in OBJECTS.items():
        for path, write in PATHS.items():
            # Stock's Group bug leaves each written guide in a reference cycle; collect
            # it, so that every build starts from the same interpreter state.
            gc.collect()
            try:
                found[f"{name} / {path}"] = write(make())
            except Exception as error:
                found[f"{name} / {path}"] = f"cannot write: {type(error).__name__}: {error}"
    store_file = io.BytesIO()
    store = _store()
    # What ParamStoreDict.save() writes, to a buffer instead of a file.
    torch.save(store.get_state(), store_file)
    found["param store save() / torch.save"] = _zip_digest(store_file.getvalue())
    return found


if __name__ == "__main__":
    print(json.dumps(written()))
