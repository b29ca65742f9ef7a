"""Every exception and warning pyro-pickle-fix raises or gives."""

import pickle


class PyroPickleFixWarning(UserWarning):
    """Something was left unpatched (a missing target, an unknown pyro-ppl, a bad
    ``PYRO_PICKLE_FIX`` value, a wrapper another library put on top of ours); pyro
    behaves as stock there."""


def warn(message: str) -> None:
    """One :class:`PyroPickleFixWarning`, attributed to the caller's caller."""
    import warnings

    warnings.warn(message, PyroPickleFixWarning, stacklevel=3)


class DeadReferenceError(pickle.PicklingError):
    """An object refers through a dead weak reference to what it needs; pickling it
    would write bytes that cannot be loaded."""


class UntrustedGlobalError(pickle.UnpicklingError):
    """A param-store file needs a global beyond tensors and the constraint classes
    pyro and torch define; it was not loaded, and none of its code ran."""

    def __init__(self, message: str, name: str | None) -> None:
        super().__init__(message)
        #: The global the file asked for (``module.qualname``), if torch named it.
        self.name = name


class UntrustedContentError(pickle.UnpicklingError):
    """A file loaded weights-only holds what pyro never writes there (a cycle, deep
    nesting, an object of another type, a tensor that repeats its data far beyond
    what the file holds); it was not loaded, and nothing was changed."""

    def __init__(self, message: str, where: str) -> None:
        super().__init__(message)
        #: Where in the loaded state, e.g. ``constraints['x'].base_constraint``.
        self.where = where


class DamagedFileError(pickle.UnpicklingError):
    """A file given to pyro's load is not whole, or not a file ``torch.save``
    writes: cut short, empty, or of another format.  It was not loaded, and nothing
    was changed; no other way of loading it can help: save it again."""

    def __init__(self, message: str, where: str) -> None:
        super().__init__(message)
        #: What is missing or damaged, e.g. ``archive`` (its central directory).
        self.where = where


class InstallError(Exception):
    """Start-up activation could not be changed; the message says what to do."""


class AuditInputError(Exception):
    """The object to audit could not be had; the message says what to fix."""
