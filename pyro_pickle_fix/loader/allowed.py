"""What a file may name: the constraint classes a param-store file may hold
(:data:`ALLOWED`), the list :func:`safe_globals` gives users, and the published
advisories against torch's own weights-only loading."""

from __future__ import annotations

from .messages import is_constraint_class

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .messages import Kind

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


def allowed_for(kind: Kind) -> dict[str, type]:
    """This load's constraint classes, by the name a file gives them: the fixed
    :data:`ALLOWED`, and the constraint classes the user allowed in torch's own
    allowlist (read, never changed)."""
    if not kind.constraints:
        return {}
    import torch.serialization

    found = {f"{cls.__module__}.{cls.__qualname__}": cls for cls in safe_globals()}
    users = getattr(torch.serialization, "get_safe_globals", None)  # torch 2.4+
    for entry in users() if users is not None else ():
        cls, name = entry if isinstance(entry, tuple) else (entry, None)
        if isinstance(cls, type) and is_constraint_class(cls):
            found[name or f"{cls.__module__}.{cls.__qualname__}"] = cls
    return found
