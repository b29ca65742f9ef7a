"""Write the tables of the README and docs/ that say which bug is in which release,
from the table ``status`` uses (the ``Bug`` ranges of each repair in
``pyro_pickle_fix/fixes/``), so that no page states a release by hand.

    python tools/docs_tables.py           # rewrite them
    python tools/docs_tables.py --check   # exit 1 if a page is out of date

- README.md, "Do I need it?": each bug as a row, each pyro-ppl release line and
  torch as a column (``NEEDS``);
- docs/how-it-works.md, the repair table: each repair's target, each bug it fixes,
  where that bug is, and its upstream link (``REPAIRS``).

``tests/test_docs.py`` runs ``--check``; a new bug fails it until it has a phrase
in :data:`PHRASES`.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pyro_pickle_fix._engine import repairs  # noqa: E402
from pyro_pickle_fix._repairs import KNOWN_PYRO, Bug, Version  # noqa: E402

Cell = tuple[Sequence[Version], Sequence[Version]]  # (pyro-ppl releases, torches)

#: The README's columns: the releases users have, and torch before and from 2.6
#: (where torch.load turned weights-only).
RELEASES_BEFORE: Sequence[Version] = ((1, 8, 6), (1, 9, 0), (1, 9, 1))
COLUMNS: dict[str, Cell] = {
    "pyro-ppl <= 1.9.1, torch < 2.6": (RELEASES_BEFORE, ((2, 0), (2, 5))),
    "pyro-ppl <= 1.9.1, torch >= 2.6": (RELEASES_BEFORE, ((2, 6), (2, 15))),
    "pyro-ppl 1.9.2, torch < 2.6": (((1, 9, 2),), ((2, 0), (2, 5))),
    "pyro-ppl 1.9.2, torch >= 2.6": (((1, 9, 2),), ((2, 6), (2, 15))),
}
PYTHONS: Sequence[Version] = ((3, 10), (3, 11))

#: A short phrase per bug, by (repair target, index of the bug in the repair),
#: for the README: "saving" or "loading", and the phrase.  Bugs with the same
#: phrase share a row.  None: a part of another repair's bug, with no row.
PHRASES: dict[tuple[str, int], tuple[str, str] | None] = {
    ("torch._tensor.Tensor.__getstate__", 0): (
        "saving",
        "a `pyro.param()` value cannot be saved (`cannot pickle 'weakref.ReferenceType'`)",
    ),
    ("torch._tensor.Tensor.__copy__", 0): None,
    ("torch._tensor.Tensor.__deepcopy__", 0): (
        "saving",
        "`copy.deepcopy` of a trained guide that caches non-leaf tensors fails",
    ),
    ("pyro.nn.module.PyroModule.__getstate__", 0): (
        "saving",
        "a save strips pyro's `unconstrained` weakref from the live parameters",
    ),
    ("pyro.params.param_store.ParamStoreDict.get_state", 0): (
        "saving",
        "a save strips pyro's `unconstrained` weakref from the live parameters",
    ),
    ("torch.distributions.transforms.Transform.__getstate__", 0): (
        "saving",
        "a save sets a live transform's weakrefs to `None`",
    ),
    ("pyro.poutine.guide.GuideMessenger.__getstate__", 0): (
        "saving",
        "a save drops a live `GuideMessenger`'s trace",
    ),
    ("pyro.infer.autoguide.guides.AutoGuide.__getstate__", 0): (
        "saving",
        "an AutoGuide loses its model: `guide.model` raises, nested guides fail",
    ),
    ("pyro.infer.autoguide.guides.AutoGuide.__setstate__", 0): (
        "saving",
        "`copy.copy` of an `AutoGuideList` takes the original's child guides",
    ),
    ("pyro.contrib.easyguide.easyguide.Group.__getstate__", 0): (
        "saving",
        "an EasyGuide's next SVI step fails (`TypeError`)",
    ),
    ("pyro.contrib.easyguide.easyguide.Group.__getstate__", 1): (
        "saving",
        "a Group whose EasyGuide is gone saves bytes that cannot load",
    ),
    ("pyro.contrib.easyguide.easyguide.EasyGuide.__getstate__", 0): (
        "saving",
        "an EasyGuide saved while it trains fails (`dictionary changed size`)",
    ),
    ("pyro.contrib.easyguide.easyguide.EasyGuide.__copy__", 0): None,
    ("pyro.contrib.easyguide.easyguide.EasyGuide.__setstate__", 0): (
        "saving",
        "`copy.copy` of an EasyGuide runs through the original's Groups",
    ),
    ("distributed.protocol.serialize.dask_serialize", 0): (
        "saving",
        "Dask cannot ship an `AutoGuideList` (`Could not serialize ... ReferenceType`)",
    ),
    ("pyro.params.param_store.ParamStoreDict.load", 0): (
        "loading",
        "`get_param_store().load()` fails on every file pyro writes (`UnpicklingError`)",
    ),
    ("pyro.params.param_store.ParamStoreDict.load", 1): (
        "loading",
        "both loads run whatever code the file holds (`weights_only=False`)",
    ),
    ("pyro.params.param_store.ParamStoreDict.load", 2): (
        "loading",
        "both loads run whatever code the file holds (`weights_only=False`)",
    ),
    ("pyro.params.param_store.ParamStoreDict.load", 3): (
        "loading",
        "the param store's load builds what a crafted file describes, unchecked",
    ),
    ("pyro.optim.optim.PyroOptim.load", 0): (
        "loading",
        "both loads run whatever code the file holds (`weights_only=False`)",
    ),
    ("pyro.optim.optim.PyroOptim.load", 1): (
        "loading",
        "both loads run whatever code the file holds (`weights_only=False`)",
    ),
    ("pyro.optim.optim.PyroOptim.load", 2): (
        "loading",
        "`optim.load()` makes a few KB of file a tensor of any size",
    ),
}

NEEDS_BEGIN = "<!-- needs-table:begin (generated by tools/docs_tables.py; do not edit) -->"
NEEDS_END = "<!-- needs-table:end -->"
REPAIRS_BEGIN = "<!-- repair-table:begin (generated by tools/docs_tables.py; do not edit) -->"
REPAIRS_END = "<!-- repair-table:end -->"


def _version(version: Version) -> str:
    return ".".join(map(str, version))


def _present(bugs: Iterable[Bug], pyro: Version, python: Version, torch: Version) -> bool:
    return any(bug.present(pyro, python, torch) for bug in bugs)


def cell(bugs: Sequence[Bug], column: Cell) -> str:
    """Where in ``column`` any of ``bugs`` is: "yes", "no", or the releases and
    Pythons it is limited to."""
    releases, torches = column
    where = {
        (pyro, python)
        for pyro in releases
        for python in PYTHONS
        for torch in torches
        if _present(bugs, pyro, python, torch)
    }
    if not where:
        return "no"
    if len(where) == len(releases) * len(PYTHONS):
        return "yes"
    found_releases = sorted({pyro for pyro, _ in where})
    parts = []
    if len(found_releases) < len(releases):
        parts.append(" and ".join(map(_version, found_releases)))
    if all(python >= (3, 11) for _, python in where):
        parts.append("Python 3.11+")
    return ", ".join(parts)


def needs_table() -> list[str]:
    """The README's table: a row per phrase, saving first."""
    rows: dict[tuple[str, str], list[Bug]] = {}
    for repair in repairs():
        for index, bug in enumerate(repair.bugs):
            key = (repair.dotted, index)
            if key not in PHRASES:
                raise KeyError(f"{key} has no phrase in tools/docs_tables.py PHRASES")
            phrase = PHRASES[key]
            if phrase is not None:
                rows.setdefault(phrase, []).append(bug)
    lines = [
        "| without the fix | " + " | ".join(COLUMNS) + " |",
        "|---" * (len(COLUMNS) + 1) + "|",
    ]
    for kind in ("saving", "loading"):
        for (row_kind, phrase), bugs in rows.items():
            if row_kind == kind:
                cells = [cell(bugs, column) for column in COLUMNS.values()]
                lines.append(f"| {kind}: {phrase} | " + " | ".join(cells) + " |")
    return lines


def where(bug: Bug) -> str:
    """The releases, Pythons and torches a bug is in, in words."""
    parts = []
    low, high = bug.pyro_min, bug.pyro_max
    if low and high:
        parts.append(f"pyro-ppl {_version(low)}-{_version(high)}")
    elif high:
        parts.append(f"pyro-ppl <= {_version(high)}")
    elif low:
        parts.append(f"pyro-ppl >= {_version(low)}")
    else:
        parts.append("every pyro-ppl")
    if bug.python_min:
        parts.append(f"Python {_version(bug.python_min)}+")
    if bug.torch_min:
        parts.append(f"torch >= {_version(bug.torch_min)}")
    if bug.torch_max:
        parts.append(f"torch <= {_version(bug.torch_max)}")
    return ", ".join(parts)


def repair_table() -> list[str]:
    """The repair table of docs/how-it-works.md: a row per bug of each repair."""
    lines = [
        "| target | what stock does | where (verified on pyro-ppl "
        f"{_version(KNOWN_PYRO[0])}-{_version(KNOWN_PYRO[1])}) | upstream |",
        "|---|---|---|---|",
    ]
    for repair in repairs():
        for bug in repair.bugs:
            upstream = f"[link]({bug.upstream})" if bug.upstream else "none found"
            summary = bug.summary.replace("|", "\\|")
            lines.append(f"| `{repair.dotted}` | {summary} | {where(bug)} | {upstream} |")
    return lines


def replaced(text: str, begin: str, end: str, table: list[str]) -> str:
    start, stop = text.find(begin), text.find(end)
    if start < 0 or stop < start:
        raise ValueError(f"no markers {begin!r} ... {end!r}")
    return text[: start + len(begin)] + "\n" + "\n".join(table) + "\n" + text[stop:]


#: page -> the tables it carries
PAGES = {
    "README.md": [(NEEDS_BEGIN, NEEDS_END, needs_table)],
    "docs/how-it-works.md": [(REPAIRS_BEGIN, REPAIRS_END, repair_table)],
}


def rendered(page: str) -> str:
    """The page as it should read, with its tables written anew."""
    text = (ROOT / page).read_text()
    for begin, end, make in PAGES[page]:
        text = replaced(text, begin, end, make())
    return text


def main(argv: Sequence[str]) -> int:
    stale = []
    for page in PAGES:
        text = rendered(page)
        if text != (ROOT / page).read_text():
            stale.append(page)
            if "--check" not in argv:
                (ROOT / page).write_text(text)
    if stale and "--check" in argv:
        print(f"out of date: {', '.join(stale)}; run python tools/docs_tables.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
