"""Dask, which serializes Pyro objects its own way.

Dask's ``dask`` serializer family has a generic serializer for every
``torch.nn.Module`` that walks ``__dict__`` directly, past ``__getstate__``: it
never reaches the copy-on-serialize wrappers, logs errors on pyro's weakrefs and
fails outright on an ``AutoGuideList``.  The ``dask_pickle`` entry of
:data:`REPAIRS` registers Pyro modules with a ``dask``
serializer that declines (``NotImplementedError``), so Dask falls back to its
``pickle`` family, which goes through the wrappers.  Nothing here imports
distributed: the entry is applied when ``distributed`` has imported it.
"""

from __future__ import annotations

from .._repairs import Bug, Repair

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def _decline(obj: Any, *args: Any, **kwargs: Any) -> Any:
    # Dask tries its next family (pickle) when a serializer raises this.
    raise NotImplementedError("pyro-pickle-fix: Pyro modules are serialized with pickle")


_decline._pyro_pickle_fix = True  # type: ignore[attr-defined]  # found again after a reload


def _ours(function: Any) -> bool:
    return getattr(function, "_pyro_pickle_fix", False) is True


class DaskRegistration:
    """Pyro modules registered with a Dask dispatch (``dask_serialize``) as "use
    pickle"; :meth:`remove` puts the registry back exactly as it was."""

    def __init__(self, dispatch: Any) -> None:
        from pyro.nn.module import PyroModule

        self.dispatch = dispatch
        self.base = PyroModule
        lookup: dict[Any, Any] = dispatch._lookup
        # Dask caches the serializer it found for each class it has seen: a guide
        # class already shipped once is registered under its own name too.
        self.saved = {
            cls: function
            for cls, function in lookup.items()
            if isinstance(cls, type) and issubclass(cls, PyroModule) and not _ours(function)
        }
        for cls in [PyroModule, *self.saved]:
            lookup[cls] = _decline

    def active(self) -> bool:
        return _ours(self.dispatch._lookup.get(self.base))

    def remove(self) -> None:
        lookup = self.dispatch._lookup
        for cls, function in list(lookup.items()):
            if _ours(function):
                if cls in self.saved:
                    lookup[cls] = self.saved[cls]
                else:
                    del lookup[cls]


REPAIRS = (
    Repair(
        "distributed.protocol.serialize:dask_serialize",
        (
            # distributed.protocol.torch registers a generic serializer for every
            # torch.nn.Module that walks __dict__ past __getstate__; registering
            # PyroModule as "use pickle" routes guides through the repairs.
            Bug(
                "Dask serializes a guide by walking its __dict__, past __getstate__: "
                "errors are logged for pyro's weakrefs, and an AutoGuideList fails "
                "with 'Could not serialize object of type ReferenceType'"
            ),
        ),
        DaskRegistration,
        how="register",
    ),
)
