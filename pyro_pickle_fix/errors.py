"""The warning pyro-pickle-fix gives when it leaves something unpatched."""


class PyroPickleFixWarning(UserWarning):
    """A target was skipped or could not be patched; pyro behaves as stock there."""
