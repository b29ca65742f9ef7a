"""Loading pyro's two files, the param store's (``ParamStoreDict.load``) and the
optimizer's (``PyroOptim.load``), without trusting them.

Each load owns its unpickler, and runs four stages, each a module:

1. :mod:`.archive`: torch's zip format, every record stored uncompressed, inside
   the file and not overlapping another; the legacy (non-zip) format is refused;
2. :mod:`.unpickler`: a small pure-Python unpickler that knows the handful of
   pickle opcodes ``torch.save`` writes (protocol 2) and hands out only inert
   records (:mod:`.records`): dense tensors and Parameters, plain containers and
   scalars, and (in a param-store file) the constraint classes of
   :data:`~.allowed.ALLOWED` plus any constraint class the user allowed with
   ``torch.serialization.add_safe_globals``; each storage it declares has its
   record, of exactly its size;
3. :mod:`.checks`: the state, whole: the shape pyro writes, every tensor within
   its data, every constraint's attributes, no constraint whose tensors broadcast
   past what the file holds, nesting and size within their limits;
4. :mod:`.build`: only then are the storages read and the objects made.

:mod:`.messages` words every refusal.  Nothing of torch's is replaced, and the
allowlist of a load is that load's alone: there is no module-level state, no
lock, nothing an interrupt, a nested load, a thread or a fork could leave behind.

Imported when pyro is imported; standard library only at module level.
"""

from __future__ import annotations

from ..errors import UntrustedContentError
from .allowed import ALLOWED, NOT_ALLOWED, advisory, allowed_for, safe_globals
from .archive import Archive
from .build import Build
from .checks import Check, check_optim, check_store
from .messages import OPTIM, STORE
from .unpickler import MAX_PICKLE, NamesConstraint, Unpickler, refuse_constraint

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .messages import Kind

__all__ = ["ALLOWED", "NOT_ALLOWED", "advisory", "load_optim_state", "load_state", "safe_globals"]


def _load(
    filename: Any,
    map_location: Any,
    kind: Kind,
    scheduler: type | None = None,
    nested: str | None = None,
) -> Any:
    with open(filename, "rb") as file:
        archive = Archive(file, filename, kind)
        data = archive.small("data.pkl", MAX_PICKLE)
        if data is None:
            archive.refuse("data.pkl", "is missing")
        unpickler = Unpickler(data, archive, allowed_for(kind))
        try:
            state = unpickler.load()
        except NamesConstraint as named:
            refuse_constraint(data, archive, named.name)
        check = Check(filename, kind, archive.length, unpickler.shared)
        if kind is STORE:
            check_store(check, state)
        else:
            check_optim(check, state, scheduler, nested)
        try:
            return Build(archive, map_location, unpickler.shared).value(state)
        except (RuntimeError, ValueError, TypeError, AssertionError, OSError) as error:
            # torch's own refusal of what the checks let through (a device this
            # machine lacks, say): the package's error, torch's chained.
            raise UntrustedContentError(
                f"pyro-pickle-fix could not load {str(filename)!r} as {kind.what}: torch "
                f"refused to build it: {type(error).__name__}: {error}. Nothing was loaded.",
                "",
            ) from error


def load_state(filename: Any, map_location: Any = None) -> Any:
    """A param-store file's state, for ``ParamStoreDict.set_state``.

    :class:`UntrustedGlobalError` if the file names anything beyond tensors, plain
    data and the allowed constraint classes; :class:`UntrustedContentError` if what
    it holds is not what pyro writes.  Either way nothing was built, and the param
    store is unchanged.
    """
    return _load(filename, map_location, STORE)


def load_optim_state(
    filename: Any,
    map_location: Any = None,
    *,
    scheduler: type | None = None,
    nested: str | None = None,
) -> Any:
    """An optimizer file's state (``PyroOptim.save()``), for ``PyroOptim.set_state``;
    refused as :func:`load_state` refuses.  ``scheduler``: the learning-rate
    scheduler class whose states the file holds (a ``PyroLRScheduler``'s), whose
    methods no state may name; ``nested``: the key of each entry that holds the
    scheduler's own state (``"scheduler"`` where pyro saves the optimizer's beside
    it), None where the entry is the scheduler's state."""
    return _load(filename, map_location, OPTIM, scheduler, nested)
