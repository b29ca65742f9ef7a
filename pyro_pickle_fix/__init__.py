"""pyro-pickle-fix: serializing a Pyro object never changes the live object.

Importing this package wraps pyro-ppl's serialization methods (see
:data:`pyro_pickle_fix.patches.PATCHES`) as soon as pyro imports them, unless the
environment variable ``PYRO_PICKLE_FIX`` is ``0``, ``false``, ``off`` or ``no``.
"""

from __future__ import annotations

from .errors import PyroPickleFixWarning
from .patching import Status, TargetStatus, activate, is_patched, patch, status, unpatch

__version__ = "0.1.0"

__all__ = [
    "DeadReferenceError",
    "PyroPickleFixWarning",
    "Status",
    "TargetStatus",
    "is_patched",
    "patch",
    "status",
    "unpatch",
]

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .serialize import DeadReferenceError
else:

    def __getattr__(name: str) -> object:
        # Lazy: the error's module imports pickle, which start-up activation must not pay for.
        if name == "DeadReferenceError":
            from .serialize import DeadReferenceError

            return DeadReferenceError
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


activate()
