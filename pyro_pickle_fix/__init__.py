"""pyro-pickle-fix: serializing a Pyro object never changes the live object.

Importing this package wraps pyro-ppl's serialization methods (see
:data:`pyro_pickle_fix.patches.PATCHES`) as soon as pyro is imported, unless the
environment variable ``PYRO_PICKLE_FIX`` is ``0``, ``false``, ``off`` or ``no``.

Import-time activation loads :mod:`pyro_pickle_fix.trigger` alone; the API below
is loaded on first use, so that start-up activation costs next to nothing in the
many processes that never import pyro.
"""

from . import trigger

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .auditing import AuditReport, audit
    from .dask_plugin import DaskWorkerPlugin
    from .errors import PyroPickleFixWarning
    from .patching import Status, TargetStatus, is_patched, patch, status, unpatch
    from .serialize import DeadReferenceError

__version__ = "0.1.0"

__all__ = [
    "AuditReport",
    "DaskWorkerPlugin",
    "DeadReferenceError",
    "PyroPickleFixWarning",
    "Status",
    "TargetStatus",
    "audit",
    "is_patched",
    "patch",
    "status",
    "unpatch",
]

# public name -> the module that defines it
_API = {
    "AuditReport": "auditing",
    "audit": "auditing",
    "DaskWorkerPlugin": "dask_plugin",
    "DeadReferenceError": "serialize",
    "PyroPickleFixWarning": "errors",
    "Status": "patching",
    "TargetStatus": "patching",
    "is_patched": "patching",
    "patch": "patching",
    "status": "patching",
    "unpatch": "patching",
}


def __getattr__(name: str) -> object:
    if name not in _API:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])


trigger.activate()
