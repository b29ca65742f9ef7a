"""Start-up activation: a marked block in ``sitecustomize.py`` that imports the fix.

``install`` appends the block (creating the file if needed) and keeps every other
byte; ``uninstall`` removes exactly that block, and the file only if ``install``
created it and nothing else is left in it.
"""

from __future__ import annotations

import contextlib
import os
import sys
import sysconfig

from .errors import InstallError

BEGIN = "# >>> pyro-pickle-fix >>>"
END = "# <<< pyro-pickle-fix <<<"
_META = "# pyro-pickle-fix-install: created={created} newline={newline}\n"

# Never break start-up: if the package is gone or anything in it raises, Python
# starts as if we were not installed (one stderr line with PYRO_PICKLE_FIX_DEBUG=1).
_BODY = f"""\
# Added by `python -m pyro_pickle_fix install`; remove it with
# `python -m pyro_pickle_fix uninstall`. Activates pyro-pickle-fix in every
# interpreter of this environment (PYRO_PICKLE_FIX=0 turns it off).
try:
    import pyro_pickle_fix
except Exception as _pyro_pickle_fix_error:
    import os as _pyro_pickle_fix_os

    if _pyro_pickle_fix_os.environ.get("PYRO_PICKLE_FIX_DEBUG") == "1":
        import sys as _pyro_pickle_fix_sys

        print(
            "pyro-pickle-fix: start-up activation skipped:",
            repr(_pyro_pickle_fix_error),
            file=_pyro_pickle_fix_sys.stderr,
        )
    del _pyro_pickle_fix_os
    del _pyro_pickle_fix_error
{END}
"""


def default_directory() -> str:
    """The running interpreter's site-packages (purelib)."""
    return sysconfig.get_paths()["purelib"]


def sitecustomize_path(directory: str | None = None) -> str:
    return os.path.join(directory or default_directory(), "sitecustomize.py")


def _split(text: str) -> tuple[str, str, str] | None:
    """(before, block, after) if ``text`` holds our block, else None."""
    start = text.find(BEGIN + "\n")
    if start < 0:
        return None
    end = text.find(END + "\n", start)
    if end < 0:
        return None
    end += len(END) + 1
    return text[:start], text[start:end], text[end:]


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", newline="") as file:
            return file.read()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as error:
        raise InstallError(f"cannot read {path}: {error}") from None


def _write(path: str, text: str) -> None:
    """Replace ``path`` atomically: on any failure nothing is written."""
    directory = os.path.dirname(path)
    temporary = os.path.join(directory, f".sitecustomize.py.pyro-pickle-fix-{os.getpid()}")
    try:
        with open(temporary, "w", encoding="utf-8", newline="") as file:
            file.write(text)
        if os.path.exists(path):
            os.chmod(temporary, os.stat(path).st_mode & 0o7777)
        os.replace(temporary, path)
    except OSError as error:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise InstallError(
            f"cannot write {path}: {error.strerror or error}. Run as a user who can "
            "write there, or pass --target DIR for a directory on sys.path you can write."
        ) from None


def _compile(path: str) -> None:
    """Byte-compile now, so that no interpreter pays for compiling it at start-up
    (with PYTHONDONTWRITEBYTECODE set, every one would)."""
    import importlib.util
    import py_compile

    cached = importlib.util.cache_from_source(path)
    try:
        if os.path.exists(path):
            py_compile.compile(path, cfile=cached, doraise=True)
        elif os.path.exists(cached):
            os.unlink(cached)
    except (py_compile.PyCompileError, OSError):
        pass  # Python compiles it at start-up instead, as without us


def install(directory: str | None = None) -> tuple[str, bool]:
    """Add the block to ``directory``/sitecustomize.py; (path, whether it changed)."""
    path = sitecustomize_path(directory)
    if not os.path.isdir(os.path.dirname(path)):
        raise InstallError(
            f"{os.path.dirname(path)} is not a directory; pass --target an existing "
            "directory on sys.path."
        )
    text = _read(path)
    if text is not None and _split(text) is not None:
        return path, False
    created = text is None
    before = text or ""
    newline = bool(before) and not before.endswith("\n")
    block = BEGIN + "\n" + _META.format(created=int(created), newline=int(newline)) + _BODY
    _write(path, before + ("\n" if newline else "") + block)
    _compile(path)
    return path, True


def uninstall(directory: str | None = None) -> tuple[str, bool]:
    """Remove the block; (path, whether anything changed)."""
    path = sitecustomize_path(directory)
    text = _read(path)
    parts = _split(text) if text is not None else None
    if parts is None:
        return path, False
    before, block, after = parts
    meta = block.splitlines()[1]
    if "newline=1" in meta and before.endswith("\n"):
        before = before[:-1]
    rest = before + after
    if not rest and "created=1" in meta:
        try:
            os.unlink(path)
        except OSError as error:
            raise InstallError(
                f"cannot remove {path}: {error.strerror or error}. Run as a user who "
                "can write there."
            ) from None
    else:
        _write(path, rest)
    _compile(path)
    return path, True


def _search_path() -> list[str]:
    # sitecustomize is imported before the script's directory joins sys.path.
    here = os.getcwd()
    paths = sys.path[1:] if sys.path and os.path.abspath(sys.path[0] or here) == here else sys.path
    return [os.path.abspath(p) for p in paths if p]


def effective_sitecustomize() -> str | None:
    """The sitecustomize.py Python imports at start-up (the first on sys.path)."""
    loaded = sys.modules.get("sitecustomize")
    location: str | None = getattr(loaded, "__file__", None)
    if location:
        return os.path.abspath(location)
    for directory in _search_path():
        for name in ("sitecustomize.py", os.path.join("sitecustomize", "__init__.py")):
            candidate = os.path.join(directory, name)
            if os.path.isfile(candidate):
                return candidate
    return None


def installed_in(directory: str | None = None) -> bool:
    text = _read(sitecustomize_path(directory))
    return text is not None and _split(text) is not None


def shadowing(path: str) -> str | None:
    """The sitecustomize that Python imports instead of ``path``, if any."""
    first = effective_sitecustomize()
    if first is None or (os.path.exists(path) and os.path.samefile(first, path)):
        return None
    return first


def on_search_path(path: str) -> bool:
    """Whether the directory of the sitecustomize.py at ``path`` is on this
    interpreter's ``sys.path`` as start-up reads it."""
    return os.path.dirname(os.path.abspath(path)) in _search_path()


def _ran_at_start_up() -> str | None:
    """The sitecustomize.py this interpreter imported at start-up, if it holds our
    block (wherever it is: site-packages, a ``PYTHONPATH`` directory, ``--target``)."""
    loaded = sys.modules.get("sitecustomize")
    location: str | None = getattr(loaded, "__file__", None)
    if not location or os.path.basename(location) != "sitecustomize.py":
        return None
    text = _read(os.path.abspath(location))
    return os.path.abspath(location) if text is not None and _split(text) is not None else None


def describe(directory: str | None = None) -> str:
    """One line: whether start-up activation is installed, where, and if it runs.
    Without ``directory``: where it ran at this interpreter's start-up, if it did,
    else this interpreter's site-packages."""
    ran = _ran_at_start_up() if directory is None else None
    if ran is not None:
        return f"start-up activation: installed in {ran}, and it ran at this start-up"
    path = sitecustomize_path(directory)
    if not installed_in(directory):
        return f"start-up activation: not installed (looked in {path})"
    if not on_search_path(path):
        return (
            f"start-up activation: installed in {path}, but that directory is not on "
            "sys.path, so it does not run"
        )
    shadow = shadowing(path)
    if shadow is not None:
        return (
            f"start-up activation: installed in {path}, but Python imports {shadow} "
            "first, so it does not run; add the block there or remove that file"
        )
    return f"start-up activation: installed in {path}"
