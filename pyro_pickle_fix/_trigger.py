"""Lazy activation: the only module that import-time (and start-up) activation
loads.  It reads ``PYRO_PICKLE_FIX`` and asks for :func:`pyro_pickle_fix.patch`
to run once ``pyro`` has been imported.

The post-import hook is like wrapt's, but written against the standard library
alone: importing wrapt costs more than a bare ``python -c pass``.  A finder at
the front of ``sys.meta_path`` answers only for the watched module names; it
lets the other finders find the module and wraps the loader so that the
callbacks run after the module body.  (No ``from __future__ import annotations``
here: it imports a module too; annotations naming typing-only names are quoted.)
"""

import _thread  # not threading: that costs milliseconds at start-up
import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from importlib.machinery import ModuleSpec
    from types import ModuleType
    from typing import Any

    Callback = Callable[[ModuleType], None]

ENV_VAR = "PYRO_PICKLE_FIX"
OFF_VALUES = ("0", "false", "off", "no")
ON_VALUES = ("1", "true", "on", "yes", "")

_lock = _thread.RLock()


def _after_fork_in_child() -> None:
    # A thread of the parent's may have held the lock; it does not exist here.
    global _lock
    _lock = _thread.RLock()


os.register_at_fork(after_in_child=_after_fork_in_child)

_callbacks: "dict[str, list[Callback]]" = {}
_activation_requested = False


def environment_enabled() -> bool:
    """What ``PYRO_PICKLE_FIX`` asks for; an unexpected value warns and keeps the fix on."""
    value = os.environ.get(ENV_VAR)
    if value is None:
        return True
    value = value.strip().lower()
    if value in OFF_VALUES:
        return False
    if value not in ON_VALUES:
        from .errors import warn  # loaded only when there is a warning to give

        warn(
            f"{ENV_VAR}={os.environ[ENV_VAR]!r} is not understood; the fix stays on. "
            f"Set {ENV_VAR} to one of {', '.join(OFF_VALUES)} to turn it off, or to "
            f"one of {', '.join(v for v in ON_VALUES if v)} (or unset it) to keep it on."
        )
    return True


def activate(patch: "Callback") -> None:
    """Import-time activation: ``patch`` (the package's, which loads the engine)
    once pyro is imported (or now, if it is), unless ``PYRO_PICKLE_FIX`` turns it
    off.  This module knows nothing of the engine: the engine uses its hook.

    Says so once when pyro-ppl is not installed, except at interpreter start-up
    (sitecustomize), which must stay silent in environments without pyro.
    """
    global _activation_requested
    if not environment_enabled():
        return
    _activation_requested = True
    when_imported("pyro", patch)
    if "pyro" in sys.modules or is_initializing(sys.modules.get("sitecustomize")):
        return
    import importlib.util

    if importlib.util.find_spec("pyro") is None:
        from .errors import warn

        warn(
            "pyro-ppl is not installed in this environment, so there is nothing to "
            "patch yet; the fix applies as soon as pyro is installed and imported. "
            "Install pyro-ppl, or uninstall pyro-pickle-fix if you do not need it."
        )


def activation_requested() -> bool:
    """Whether activation asked for the fix and :func:`forget_all` has not undone it."""
    return _activation_requested


def when_imported(name: str, callback: "Callback") -> None:
    """Call ``callback(module)`` once ``name`` is imported; now, if it already is.

    A callback that raises is reported as a warning: the import itself never fails
    because of it.
    """
    with _lock:
        module = sys.modules.get(name)
        if module is None or is_initializing(module):
            _callbacks.setdefault(name, []).append(callback)
            _install_finder()
            return
    _run(callback, module)


def forget_all() -> None:
    """Drop every pending callback and the activation request (modules imported
    later are left alone)."""
    global _activation_requested
    with _lock:
        _callbacks.clear()
        _activation_requested = False


def is_initializing(module: "ModuleType | None") -> bool:
    """Whether ``module`` is still running its body (its import has not finished)."""
    spec = getattr(module, "__spec__", None)
    return bool(getattr(spec, "_initializing", False))


def _run(callback: "Callback", module: "ModuleType") -> None:
    try:
        callback(module)
    except Exception as error:  # never let our hook break the user's import
        from .errors import warn

        warn(
            f"pyro-pickle-fix could not patch {module.__name__} ({error!r}); "
            "serialization of Pyro objects is left as stock pyro-ppl has it. "
            "Run `python -m pyro_pickle_fix status` for details."
        )


def _fire(name: str, module: "ModuleType") -> None:
    with _lock:
        callbacks = _callbacks.pop(name, [])
    for callback in callbacks:
        _run(callback, module)


class _ChainedLoader:
    """Delegates to the real loader; runs the callbacks after the module body."""

    def __init__(self, loader: "Any") -> None:
        self.loader = loader

    def create_module(self, spec: "ModuleSpec") -> "ModuleType | None":
        create = getattr(self.loader, "create_module", None)
        return create(spec) if create is not None else None

    def exec_module(self, module: "ModuleType") -> None:
        # Put the real loader back first so that nobody sees this one afterwards.
        module.__loader__ = self.loader
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader
        self.loader.exec_module(module)
        _fire(module.__name__, sys.modules.get(module.__name__, module))

    def __getattr__(self, name: str) -> "Any":
        return getattr(self.loader, name)


class _PostImportFinder:
    """A meta-path finder that answers only for module names with callbacks."""

    def find_spec(
        self, fullname: str, path: "Sequence[str] | None", target: "ModuleType | None" = None
    ) -> "ModuleSpec | None":
        if fullname not in _callbacks:
            return None
        for finder in sys.meta_path:
            if finder is self or isinstance(finder, _PostImportFinder):
                continue
            find_spec = getattr(finder, "find_spec", None)
            spec: ModuleSpec | None = (
                find_spec(fullname, path, target) if find_spec is not None else None
            )
            if spec is not None:
                if getattr(spec.loader, "exec_module", None) is not None:
                    # Duck-typed: importlib.abc.Loader would cost an import at start-up.
                    spec.loader = _ChainedLoader(spec.loader)  # type: ignore[assignment]
                return spec
        return None

    def invalidate_caches(self) -> None:
        pass


_finder = _PostImportFinder()


def _install_finder() -> None:
    if _finder not in sys.meta_path:
        sys.meta_path.insert(0, _finder)
