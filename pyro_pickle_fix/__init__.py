"""pyro-pickle-fix: serializing a Pyro object never changes the live object.

Importing this package wraps pyro-ppl's serialization methods (the table in
:mod:`pyro_pickle_fix.fixes`) as soon as pyro is imported, unless the
environment variable ``PYRO_PICKLE_FIX`` is ``0``, ``false``, ``off`` or ``no``.

Import-time activation loads :mod:`pyro_pickle_fix._trigger` alone; the API below
is loaded on first use, so that start-up activation costs next to nothing in the
many processes that never import pyro.
"""

from . import _trigger

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._engine import Status, TargetStatus, is_patched, patch, status, unpatch
    from .diagnostics.audit import AuditReport, audit
    from .errors import (
        DeadReferenceError,
        PyroPickleFixWarning,
        UntrustedContentError,
        UntrustedGlobalError,
    )
    from .integrations.dask_worker import DaskWorkerPlugin
    from .loader import safe_globals

__version__ = "0.2.0"

__all__ = [
    "AuditReport",
    "DaskWorkerPlugin",
    "DeadReferenceError",
    "PyroPickleFixWarning",
    "Status",
    "TargetStatus",
    "UntrustedContentError",
    "UntrustedGlobalError",
    "audit",
    "is_patched",
    "patch",
    "safe_globals",
    "status",
    "unpatch",
]

# public name -> the module that defines it
_API = {
    "AuditReport": "diagnostics.audit",
    "audit": "diagnostics.audit",
    "DaskWorkerPlugin": "integrations.dask_worker",
    "DeadReferenceError": "errors",
    "PyroPickleFixWarning": "errors",
    "UntrustedContentError": "errors",
    "UntrustedGlobalError": "errors",
    "Status": "_engine",
    "TargetStatus": "_engine",
    "is_patched": "_engine",
    "patch": "_engine",
    "safe_globals": "loader",
    "status": "_engine",
    "unpatch": "_engine",
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


_trigger.activate()
