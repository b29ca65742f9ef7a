"""How a repair is declared: the :class:`Bug` it fixes and the :class:`Repair`
that puts a method right.  Each family of repairs in :mod:`pyro_pickle_fix.fixes`
declares its own; :mod:`pyro_pickle_fix._engine` installs, checks and removes them.

Standard library only: loaded when pyro is imported, or when the API is used.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

Version = tuple[int, ...]  # e.g. (1, 9, 1)

#: The pyro-ppl releases every repair was verified against (the test matrix's),
#: oldest and newest.  On another release, a repair that computes what pyro's own
#: method returns (``reimplements``) is left stock: it is right only where the bytes
#: were compared.
KNOWN_PYRO: tuple[Version, Version] = ((1, 8, 6), (1, 9, 2))

PY311 = (3, 11)  # object.__getstate__ exists from 3.11 on and returns the live __dict__


class Bug:
    """One way stock pyro-ppl (or torch) corrupts the live object or a file."""

    __slots__ = (
        "pyro_max",
        "pyro_min",
        "python_min",
        "summary",
        "torch_max",
        "torch_min",
        "upstream",
    )

    def __init__(
        self,
        summary: str,
        *,
        upstream: str = "",
        pyro_min: Version | None = None,
        pyro_max: Version | None = None,
        python_min: Version | None = None,
        torch_min: Version | None = None,
        torch_max: Version | None = None,
    ) -> None:
        self.summary = summary
        #: The upstream issue or pull request the bug comes from (or that fixes it).
        self.upstream = upstream
        #: First and last pyro-ppl release with the bug; None: every release.
        self.pyro_min = pyro_min
        self.pyro_max = pyro_max
        #: First Python with the bug; None: every Python.
        self.python_min = python_min
        #: First and last torch (major, minor) with the bug; None: every torch.
        self.torch_min = torch_min
        self.torch_max = torch_max

    def present(self, pyro: Version, python: Version, torch: Version | None) -> bool | None:
        """Whether the bug is in that pyro-ppl on that Python and torch; None where
        that pyro-ppl is outside :data:`KNOWN_PYRO` (or torch is not installed and
        the bug depends on it)."""
        if self.python_min is not None and python[:2] < self.python_min:
            return False
        if self.pyro_min is not None and pyro[:3] < self.pyro_min:
            return False
        if self.pyro_max is not None and pyro[:3] > self.pyro_max:
            return False
        if self.torch_min is not None or self.torch_max is not None:
            if torch is None:
                return None
            if self.torch_min is not None and torch[:2] < self.torch_min:
                return False
            if self.torch_max is not None and torch[:2] > self.torch_max:
                return False
        return True if known_pyro(pyro) else None


def known_pyro(pyro: Version) -> bool:
    """Whether the repairs were verified against that pyro-ppl release."""
    return KNOWN_PYRO[0] <= pyro[:3] <= KNOWN_PYRO[1]


class Repair:
    """One method put right.

    ``target`` is ``"module:Owner.attribute"``; the repair goes in once ``trigger``
    (default: the target's module) is imported.  ``how`` says what ``fix`` is:

    - ``"wrap"``: a wrapt wrapper ``fix(wrapped, instance, args, kwargs)`` around
      the method the class defines (the package's design: existing subclasses and
      ``super()`` calls reach it);
    - ``"add"``: a method the class does not define, set on it while patched and
      deleted by ``unpatch()`` (the inherited one keeps running for every other class);
    - ``"replace"``: ``fix(original)`` returns a plain function put in the
      original's place, for a method torch calls per tensor, where a wrapt call
      would cost more than the work;
    - ``"register"``: ``fix(original)`` registers the repair in another library's
      registry and returns the function that undoes it (Dask).
    """

    __slots__ = ("bugs", "check", "fix", "how", "reimplements", "requires", "target", "trigger")

    def __init__(
        self,
        target: str,
        bugs: tuple[Bug, ...],
        fix: Callable[..., Any],
        *,
        how: str = "wrap",
        trigger: str | None = None,
        reimplements: bool = False,
        requires: tuple[str, ...] = (),
        check: Callable[[], None] | None = None,
    ) -> None:
        if how not in ("wrap", "add", "replace", "register"):
            raise ValueError(f"unknown how={how!r} for {target}")
        self.target = target
        self.bugs = bugs
        self.fix = fix
        self.how = how
        self.trigger = trigger or self.module
        #: The fix computes what pyro's method returns instead of calling it: it is
        #: left stock on a pyro-ppl outside :data:`KNOWN_PYRO`.
        self.reimplements = reimplements
        #: Targets this repair is unsafe without: it goes in only after them, and is
        #: left stock when one of them cannot go in.
        self.requires = requires
        #: Run once the repair is in place: an exception takes it out again, with a
        #: warning, and leaves the target stock.
        self.check = check

    @property
    def module(self) -> str:
        return self.target.partition(":")[0]

    @property
    def path(self) -> tuple[str, ...]:
        return tuple(self.target.partition(":")[2].split("."))

    @property
    def dotted(self) -> str:
        return self.target.replace(":", ".")

    @property
    def package(self) -> str:
        """The distribution the target belongs to, for messages."""
        top = self.module.split(".")[0]
        return {"pyro": "pyro-ppl", "distributed": "distributed"}.get(top, top)

    def needed(self, pyro: Version, python: Version, torch: Version | None) -> bool | None:
        """Whether that pyro-ppl on that Python and torch has a bug this repair
        fixes (None: unknown)."""
        answers = [bug.present(pyro, python, torch) for bug in self.bugs]
        if True in answers:
            return True
        return None if None in answers else False

    def __repr__(self) -> str:
        return f"Repair({self.target!r})"


def parse_version(text: str) -> Version:
    """``"1.9.1"``, ``"1.9.1+abc"`` or ``"1.10.0.dev3"`` -> its leading release numbers."""
    numbers = []
    for part in text.replace("+", ".").split("."):
        digits = ""
        for char in part:
            if not char.isdigit():
                break
            digits += char
        if not digits:
            break
        numbers.append(int(digits))
        if digits != part:
            break
    if not numbers:
        raise ValueError(f"not a version: {text!r}")
    return tuple(numbers)
