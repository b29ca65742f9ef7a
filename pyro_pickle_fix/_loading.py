"""Loading pyro's files weights-only: the param store's ``load`` and the
optimizer's ``PyroOptim.load``.

A param-store file (``pyro.get_param_store().save()``) holds tensors and
constraint objects, each constraint a class plus a ``__dict__``; an optimizer file
(``PyroOptim.save()``) holds tensors and plain containers.  Both load through
torch's weights-only unpickler.  The param store also needs the constraint classes
of :data:`ALLOWED`: they are allowed for the loading thread alone, for that one
call, so torch's process-wide allowlist (``add_safe_globals``) is neither widened
for other threads nor changed for anyone.  After the load, and before pyro sees the
state, :func:`check_store_state` / :func:`check_optim_state` refuse the crafted
content that weights-only loading lets through (cycles, tensors that repeat their
data far beyond what the file holds).

How far torch's weights-only unpickler can be trusted depends on torch:
:func:`advisory` names the published advisories for a torch version.

Loaded when pyro is imported (the patcher asks it whether this torch is
supported); standard library only at module level.
"""

from __future__ import annotations

import _thread
import pickle
import re

from ._repairs import Unsupported  # noqa: F401  (interim: the old patcher imports it here)
from .errors import UntrustedContentError, UntrustedGlobalError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from types import ModuleType
    from typing import Any, NoReturn


#: What a param-store file may name besides tensors: every constraint class that
#: torch and pyro define (``module.qualname``), fixed, whatever the process has
#: imported.  A name this torch or pyro lacks is skipped.  Keep in step with
#: torch and pyro: ``tests/test_loading.py`` checks that this list and
#: :data:`NOT_ALLOWED` together are every ``Constraint`` subclass they define.
ALLOWED: tuple[str, ...] = (
    "torch.distributions.constraints.Constraint",
    "torch.distributions.constraints.MixtureSameFamilyConstraint",  # torch 2.1+
    "torch.distributions.constraints._Boolean",
    "torch.distributions.constraints._Cat",
    "torch.distributions.constraints._CorrCholesky",
    "torch.distributions.constraints._Dependent",
    "torch.distributions.constraints._GreaterThan",
    "torch.distributions.constraints._GreaterThanEq",
    "torch.distributions.constraints._HalfOpenInterval",
    "torch.distributions.constraints._IndependentConstraint",
    "torch.distributions.constraints._IntegerGreaterThan",
    "torch.distributions.constraints._IntegerInterval",
    "torch.distributions.constraints._IntegerLessThan",
    "torch.distributions.constraints._Interval",
    "torch.distributions.constraints._LessThan",
    "torch.distributions.constraints._LowerCholesky",
    "torch.distributions.constraints._LowerTriangular",
    "torch.distributions.constraints._Multinomial",
    "torch.distributions.constraints._OneHot",
    "torch.distributions.constraints._PositiveDefinite",
    "torch.distributions.constraints._PositiveSemidefinite",
    "torch.distributions.constraints._Real",
    "torch.distributions.constraints._Simplex",
    "torch.distributions.constraints._Square",
    "torch.distributions.constraints._Stack",
    "torch.distributions.constraints._Symmetric",
    "pyro.distributions.coalescent.CoalescentTimesConstraint",
    "pyro.distributions.constraints._CorrMatrix",
    "pyro.distributions.constraints._Integer",
    "pyro.distributions.constraints._OrderedVector",
    "pyro.distributions.constraints._PositiveOrderedVector",
    "pyro.distributions.constraints._SoftplusLowerCholesky",
    "pyro.distributions.constraints._SoftplusPositive",
    "pyro.distributions.constraints._Sphere",
    "pyro.distributions.constraints._UnitLowerCholesky",
    "pyro.distributions.mixture.MaskedConstraint",
    "pyro.distributions.one_one_matching.OneOneMatchingConstraint",
    "pyro.distributions.one_two_matching.OneTwoMatchingConstraint",
)

#: Constraint classes that torch or pyro define and :data:`ALLOWED` leaves out.
NOT_ALLOWED: dict[str, str] = {
    # A property subclass: its instances wrap a function, which no weights-only
    # file can hold, so no genuine file needs it.
    "torch.distributions.constraints._DependentProperty": "a property that wraps a function",
}

#: Published advisories against torch's weights-only loading: the first torch
#: (major, minor) that fixes each, and what it allows a crafted file to do.
ADVISORIES: tuple[tuple[tuple[int, int], str], ...] = (
    (
        (2, 6),
        "CVE-2025-32434 (torch < 2.6): a crafted file can run code even with "
        "torch.load(..., weights_only=True)",
    ),
    (
        (2, 10),
        "CVE-2026-24747 (torch < 2.10): a crafted file can corrupt memory in the "
        "weights-only unpickler",
    ),
)

#: Nesting that a genuine constraint or optimizer state never comes near.
MAX_DEPTH = 32


def advisory(torch_version: tuple[int, ...]) -> str | None:
    """What the published advisories say about weights-only loading on that torch
    (``(2, 5, 1)``, say); None from torch 2.10 on, where none applies."""
    found = [text for fixed, text in ADVISORIES if tuple(torch_version[:2]) < fixed]
    if not found:
        return None
    version = ".".join(map(str, torch_version))
    return (
        f"torch {version}: weights-only loading is not safe for a file you did not "
        f"make: {'; '.join(found)}. Upgrade to torch 2.10 or newer."
    )


# ---------------------------------------------------------------------------
# The allowlist


def safe_globals() -> list[type]:
    """The constraint classes of :data:`ALLOWED` that this torch and pyro define:
    what a param-store file needs beyond tensors.  The same list whatever the
    process has imported.  To load a file that embeds ``get_state()`` yourself::

        torch.serialization.add_safe_globals(pyro_pickle_fix.safe_globals())
        state = torch.load(path, weights_only=True)
    """
    import importlib

    found = []
    for name in ALLOWED:
        module_name, _, attribute = name.rpartition(".")
        try:
            module = importlib.import_module(module_name)
        except ImportError:  # pyro is not installed, or this release lacks the module
            continue
        cls = vars(module).get(attribute)
        if isinstance(cls, type):
            found.append(cls)
    return found


def _allowed_by_name() -> dict[str, type]:
    # Under the name torch looks a class up by (module + qualname; __name__ on
    # torch 2.5, the same for these top-level classes).
    return {f"{cls.__module__}.{cls.__qualname__}": cls for cls in safe_globals()}


# ---------------------------------------------------------------------------
# A per-thread allowlist: torch's unpickler looks the user allowlist up through the
# module-level function _get_user_allowed_globals() (torch 2.5 to 2.15, at least).
# While a load of ours runs, that function is replaced by one that adds our
# classes on the loading thread only; every other thread gets exactly what
# torch's own function returns.  The last load to finish puts torch's back.

_HOOK = "_get_user_allowed_globals"
_lock = _thread.allocate_lock()
_per_thread = _thread._local()
_loads_running = 0
_swapped: tuple[Any, Any] | None = None  # (torch's function, ours) while swapped


def supported() -> bool:
    """Whether this torch has the weights-only allowlist (``safe_globals``, 2.5+)."""
    import torch.serialization

    return hasattr(torch.serialization, "safe_globals")


def hook_point() -> ModuleType | None:
    """torch's weights-only unpickler module, if its ``Unpickler`` reads the user
    allowlist through a module-level ``_get_user_allowed_globals()``; else None."""
    import torch._weights_only_unpickler as unpickler

    load = getattr(getattr(unpickler, "Unpickler", None), "load", None)
    code = getattr(load, "__code__", None)
    if callable(getattr(unpickler, _HOOK, None)) and code and _HOOK in code.co_names:
        return unpickler
    return None


def _widened(torchs: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
    def _get_user_allowed_globals() -> dict[str, Any]:
        allowed = torchs()
        extra = getattr(_per_thread, "allowed", None)
        if extra:
            return {**extra, **allowed}
        return allowed

    _get_user_allowed_globals.__wrapped__ = torchs  # type: ignore[attr-defined]
    return _get_user_allowed_globals


class Allowing:
    """Within the block, torch's weights-only unpickler allows ``classes`` (name ->
    class) on the calling thread, in addition to torch's own allowlist."""

    def __init__(self, unpickler: ModuleType, classes: dict[str, type]) -> None:
        self.unpickler = unpickler
        self.classes = classes
        self.outer: dict[str, type] | None = None

    def __enter__(self) -> None:
        global _loads_running, _swapped
        with _lock:
            if _loads_running == 0:
                torchs = getattr(self.unpickler, _HOOK)
                _swapped = (torchs, _widened(torchs))
                setattr(self.unpickler, _HOOK, _swapped[1])
            _loads_running += 1
        self.outer = getattr(_per_thread, "allowed", None)
        _per_thread.allowed = {**(self.outer or {}), **self.classes}

    def __exit__(self, *exc: object) -> None:
        global _loads_running, _swapped
        _per_thread.allowed = self.outer
        with _lock:
            _loads_running -= 1
            if _loads_running == 0 and _swapped is not None:
                torchs, ours = _swapped
                # Another library may have put its own on top of ours since: ours
                # then stays under it, adding nothing on any thread.
                if getattr(self.unpickler, _HOOK) is ours:
                    setattr(self.unpickler, _HOOK, torchs)
                _swapped = None


# ---------------------------------------------------------------------------
# Loading


_GLOBAL = re.compile(r"GLOBAL ([\w.]+)|Unsupported class ([\w.]+)")  # torch 2.5+; 2.0-2.4
_REASON = "WeightsUnpickler error:"  # what follows is the unpickler's own message


def load_state(filename: Any, map_location: Any = None) -> Any:
    """A param-store file, loaded weights-only with :func:`safe_globals` allowed on
    this thread, and checked (:func:`check_store_state`).

    :class:`UntrustedGlobalError` if the file names anything else;
    :class:`UntrustedContentError` if what it holds is not what pyro writes.
    Either way nothing is returned, so the param store is unchanged.
    """
    import torch

    unpickler = hook_point()
    if unpickler is None:  # the patcher checked: torch changed under us
        raise RuntimeError(f"torch {torch.__version__} has no per-call allowlist")
    with open(filename, "rb") as file:
        try:
            with Allowing(unpickler, _allowed_by_name()):
                state = torch.load(file, map_location, weights_only=True)
        except pickle.UnpicklingError as error:
            raise _untrusted(filename, error, STORE) from error
    check_store_state(filename, state)
    return state


def load_optim_state(filename: Any, map_location: Any = None) -> Any:
    """An optimizer file (``PyroOptim.save()``), loaded weights-only with torch's
    own allowlist and checked (:func:`check_optim_state`)."""
    import torch

    with open(filename, "rb") as file:
        try:
            state = torch.load(file, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as error:
            raise _untrusted(filename, error, OPTIM) from error
    check_optim_state(filename, state)
    return state


class _Kind:
    """What is loaded: its name in messages, and how a user loads a file they trust."""

    def __init__(self, what: str, needs: str, trusted: str) -> None:
        self.what = what
        self.needs = needs
        self.trusted = trusted


STORE = _Kind(
    "a param-store file",
    "a tensor, a plain container nor one of the constraint classes that "
    "pyro_pickle_fix.safe_globals() lists",
    "pyro.get_param_store().set_state(torch.load(path, weights_only=False))",
)
OPTIM = _Kind(
    "an optimizer file",
    "a tensor nor a plain container",
    "optim.set_state(torch.load(path, weights_only=False))",
)


def _untrusted(filename: Any, error: pickle.UnpicklingError, kind: _Kind) -> UntrustedGlobalError:
    found = _GLOBAL.search(str(error))
    name = (found.group(1) or found.group(2)) if found else None
    if name:
        why = (
            f"it needs {name}, which is neither {kind.needs}, so loading it could run "
            "code named in the file"
        )
        allow = (
            f" If you trust that class, allow it first: torch.serialization."
            f"add_safe_globals([{name.rpartition('.')[2]}])."
        )
    else:
        text = str(error)
        tail = text.split(_REASON, 1)[1] if _REASON in text else text
        reason = next((line.strip() for line in tail.splitlines() if line.strip()), "")
        why = f"torch's weights-only unpickler refused it: {reason}"
        allow = ""
    return UntrustedGlobalError(
        f"pyro-pickle-fix refused to load {str(filename)!r} as {kind.what}: {why}. "
        f"Nothing was loaded.{allow} If you trust the whole file, load it yourself: "
        f"{kind.trusted}.",
        name,
    )


# ---------------------------------------------------------------------------
# What weights-only loading lets through, refused cheaply


def check_store_state(filename: Any, state: Any) -> None:
    """A param-store state as pyro writes it: ``{"params": {name: tensor},
    "constraints": {name: constraint}}``, each constraint a tree (no cycle, at most
    :data:`MAX_DEPTH` deep) of numbers, strings, tensors, plain containers and
    constraints, and no tensor claiming more elements than its data holds."""
    from torch.distributions.constraints import Constraint

    if type(state) is not dict or set(state) != {"params", "constraints"}:
        keys = f" with keys {sorted(map(repr, state))}" if type(state) is dict else ""
        _refuse(
            filename,
            STORE,
            "",
            f"is {_describe(state)}{keys}, not a dict with the keys 'params' and 'constraints'",
        )
    params, constraints = state["params"], state["constraints"]
    for key, value in (("params", params), ("constraints", constraints)):
        if type(value) is not dict or not all(type(name) is str for name in value):
            _refuse(filename, STORE, key, "is not a dict of parameter names")
    for name, param in params.items():
        if not _is_tensor(param):
            _refuse(filename, STORE, f"params[{name!r}]", f"is {_describe(param)}")
    for name, constraint in constraints.items():
        if not isinstance(constraint, Constraint):
            _refuse(filename, STORE, f"constraints[{name!r}]", f"is {_describe(constraint)}")
    _Walk(filename, STORE, constraints=True).value(state, "", 0)


def check_optim_state(filename: Any, state: Any) -> None:
    """An optimizer state as pyro writes it: ``{param name: state dict}``, a tree
    (no cycle, at most :data:`MAX_DEPTH` deep) of numbers, strings, tensors and
    plain containers, and no tensor claiming more elements than its data holds."""
    if type(state) is not dict or not all(type(name) is str for name in state):
        _refuse(filename, OPTIM, "", f"is {_describe(state)}, not a dict of parameter names")
    _Walk(filename, OPTIM, constraints=False).value(state, "state", 0)


_LEAVES = (type(None), bool, int, float, complex, str, bytes, bytearray)
_CONTAINERS = (dict, list, tuple, set, frozenset)


class _Walk:
    """One pass over a loaded state; each object is checked once (a state may share
    one constraint between parameters, as pyro's own files do)."""

    def __init__(self, filename: Any, kind: _Kind, *, constraints: bool) -> None:
        import torch
        from torch.distributions.constraints import Constraint

        self.filename = filename
        self.kind = kind
        self.torch = torch
        self.constraint = Constraint if constraints else None
        self.checked: set[int] = set()
        self.open: set[int] = set()  # the objects the walk is inside of

    def value(self, value: Any, where: str, depth: int) -> None:
        torch = self.torch
        if type(value) in _LEAVES or isinstance(value, (torch.dtype, torch.device)):
            return
        if id(value) in self.open:
            self.refuse(where, "refers back to an object that contains it (a cycle)")
        if id(value) in self.checked:
            return
        if depth > MAX_DEPTH:
            self.refuse(where, f"is nested more than {MAX_DEPTH} levels deep")
        self.open.add(id(value))
        if isinstance(value, torch.Tensor):
            self.tensor(value, where, depth)
        elif self.constraint is not None and isinstance(value, self.constraint):
            self.items(_attributes(value, where, self), where, depth, attributes=True)
        elif isinstance(value, dict):
            self.items(value, where, depth)
        elif isinstance(value, _CONTAINERS):  # torch.Size is a tuple
            for index, item in enumerate(value):
                self.value(item, f"{where}[{index}]", depth + 1)
        else:
            self.refuse(where, f"is {_describe(value)}")
        self.open.discard(id(value))
        self.checked.add(id(value))

    def items(self, mapping: Any, where: str, depth: int, *, attributes: bool = False) -> None:
        for key, item in mapping.items():
            if type(key) not in _LEAVES:
                self.refuse(where, f"has a key of type {_type(key)}")
            if not where:  # the top of a param-store state: 'params', 'constraints'
                inner = str(key)
            else:
                inner = f"{where}.{key}" if attributes else f"{where}[{key!r}]"
            self.value(item, inner, depth + 1)

    def tensor(self, tensor: Any, where: str, depth: int) -> None:
        torch = self.torch
        if tensor.layout == torch.strided and tensor.device.type != "meta":
            try:
                held = tensor.untyped_storage().nbytes() // max(tensor.element_size(), 1)
            except (RuntimeError, NotImplementedError):  # a tensor with no data of its own
                self.refuse(where, f"is a {_type(tensor)} with no data in the file")
            if tensor.numel() > held:
                self.refuse(
                    where,
                    f"is a tensor of shape {tuple(tensor.shape)} ({tensor.numel()} "
                    f"elements) whose data in the file is {held} element"
                    f"{'' if held == 1 else 's'}: it repeats its data (as a stride-0 "
                    "tensor from .expand() does), and every operation on it costs as if "
                    "the file held all of them",
                    fix="If you saved an expanded tensor yourself, save .clone() of it.",
                )
        state = vars(tensor) if hasattr(tensor, "__dict__") else {}
        if state:
            self.items(state, where, depth, attributes=True)

    def refuse(self, where: str, what: str, fix: str = "") -> NoReturn:
        _refuse(self.filename, self.kind, where, what, fix)


def _attributes(constraint: Any, where: str, walk: _Walk) -> dict[str, Any]:
    state = vars(constraint) if hasattr(constraint, "__dict__") else {}
    if type(state) is not dict:
        walk.refuse(where, "has no plain __dict__")
    return state


def _is_tensor(value: Any) -> bool:
    import torch

    return isinstance(value, torch.Tensor)


def _type(value: Any) -> str:
    cls = type(value)
    return f"{cls.__module__}.{cls.__qualname__}"


def _describe(value: Any) -> str:
    """``a builtins.list``, or for a class or function, which one."""
    name = getattr(value, "__qualname__", None)
    if isinstance(name, str) and callable(value):
        return f"{getattr(value, '__module__', '?')}.{name} (a {_type(value)})"
    return f"a {_type(value)}"


def _refuse(filename: Any, kind: _Kind, where: str, what: str, fix: str = "") -> NoReturn:
    raise UntrustedContentError(
        f"pyro-pickle-fix refused to load {str(filename)!r} as {kind.what}: {where or 'it'} "
        f"{what}, which a file that pyro saves never holds. Nothing was loaded. "
        f"{fix + ' ' if fix else ''}If you trust the whole file, load it yourself: "
        f"{kind.trusted}.",
        where,
    )


def unsupported() -> str | None:
    """Why this torch cannot load a param-store file weights-only with pyro's
    constraint classes allowed for one call; None where it can."""
    import torch

    if not supported():
        return (
            f"torch {torch.__version__} has no weights-only allowlist "
            "(torch.serialization.safe_globals, torch 2.5+): param-store files load "
            "as stock pyro loads them"
        )
    if hook_point() is None:
        return (
            f"torch {torch.__version__}'s weights-only unpickler has no "
            "_get_user_allowed_globals() to add pyro's constraint classes for one load "
            "without changing torch's process-wide allowlist: param-store files load "
            "as stock pyro loads them"
        )
    return None
