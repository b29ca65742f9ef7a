"""Loading a param-store file without running code from it: torch's weights-only
unpickler, with exactly the constraint classes that pyro and torch define allowed.

A param-store file (``pyro.get_param_store().save()``) holds tensors and
constraint objects; each constraint pickles as its class plus a ``__dict__``, so
nothing in a genuine file needs code to run.  Loaded when the param store's
``load`` is first patched (torch 2.5+, which has ``torch.serialization.safe_globals``).
"""

from __future__ import annotations

import pickle
import re

from .errors import UntrustedGlobalError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from ._targets import Patch
    from ._wrappers import Wrapper


class Unsupported(Exception):
    """This torch cannot do what the wrapper needs; the target is left as stock."""


def supported() -> bool:
    """Whether this torch has the weights-only allowlist (``safe_globals``, 2.5+)."""
    import torch.serialization

    return hasattr(torch.serialization, "safe_globals")


def safe_globals() -> list[type]:
    """The constraint classes that pyro and torch define: what a param-store file
    needs beyond tensors.  For ``torch.load(path, weights_only=True)`` of such a file
    (or of one that embeds ``get_state()``)::

        with torch.serialization.safe_globals(pyro_pickle_fix.safe_globals()):
            state = torch.load(path, weights_only=True)
    """
    import pyro.distributions.constraints  # noqa: F401  (defines pyro's constraints)
    from torch.distributions.constraints import Constraint

    found: dict[str, type] = {}
    pending = [Constraint]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if (cls.__module__ or "").split(".")[0] in ("torch", "pyro"):
            found[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return [found[name] for name in sorted(found)]


_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def load_state(filename: Any, map_location: Any = None) -> Any:
    """``torch.load`` of a param-store file through the weights-only unpickler with
    :func:`safe_globals` allowed; :class:`UntrustedGlobalError` (nothing loaded,
    none of the file's code run) if it needs anything else."""
    import torch

    with open(filename, "rb") as file:
        try:
            with torch.serialization.safe_globals(list(safe_globals())):
                return torch.load(file, map_location, weights_only=True)
        except pickle.UnpicklingError as error:
            raise _untrusted(filename, error) from error


def _untrusted(filename: Any, error: pickle.UnpicklingError) -> UntrustedGlobalError:
    found = _GLOBAL.search(str(error))
    name = found.group(1) if found else None
    needs = f"it needs {name}, which is" if name else "it needs a global that is"
    allow = name.rpartition(".")[2] if name else "TheClass"
    return UntrustedGlobalError(
        f"pyro-pickle-fix refused to load {str(filename)!r}: {needs} neither a tensor "
        "nor a constraint class that pyro or torch defines, so loading it would run "
        "code from the file. Nothing was loaded. If you trust that class, allow it "
        f"first: torch.serialization.add_safe_globals([{allow}]). If you trust the "
        "whole file, load it yourself: pyro.get_param_store().set_state("
        "torch.load(path, weights_only=False)).",
        name,
    )


def make_safe_load(original: Callable[..., Any], patch: Patch) -> Wrapper:
    """``ParamStoreDict.load(filename, map_location=None)`` through :func:`load_state`."""
    if not supported():
        import torch

        raise Unsupported(
            f"torch {torch.__version__} has no weights-only allowlist "
            "(torch.serialization.safe_globals, torch 2.5+): param-store files load "
            "as stock pyro loads them"
        )

    def safe_load(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        filename, map_location = _bind(*args, **kwargs)
        instance.set_state(load_state(filename, map_location))

    return safe_load


def _bind(filename: Any, map_location: Any = None) -> tuple[Any, Any]:
    return filename, map_location
