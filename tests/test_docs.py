"""The README and the pages under docs/: every table renders with the columns its
header names, the tables that say which bug is in which release are the ones
``tools/docs_tables.py`` writes from the repairs' table, every page opens with the
question it answers, and every link to a file of the checkout resolves."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", ROOT / "CHANGELOG.md", *DOCS]
PAGES += [ROOT / "benchmarks" / "COST.md"]
FENCE = re.compile(r"^ *```.*?^ *```", re.M | re.S)


def cells(line: str) -> list[str]:
    """A table row's cells as GitHub renders them: split on every pipe that is not
    escaped (a pipe inside a code span splits it too), less the outer pipes."""
    parts = re.split(r"(?<!\\)\|", line.strip())
    if parts and parts[0] == "":
        parts = parts[1:]
    if parts and parts[-1] == "":
        parts = parts[:-1]
    return [part.strip() for part in parts]


def tables(text: str) -> list[list[str]]:
    """Every table (consecutive lines that start with a pipe) outside code blocks."""
    found: list[list[str]] = []
    current: list[str] = []
    for line in [*FENCE.sub("", text).splitlines(), ""]:
        if line.lstrip().startswith("|"):
            current.append(line)
        elif current:
            found.append(current)
            current = []
    return found


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_table_renders_with_the_columns_its_header_names(page):
    for table in tables(page.read_text()):
        header, delimiter, *body = table
        assert re.fullmatch(r"\|( *:?-+:? *\|)+", delimiter.strip()), (page.name, delimiter)
        # GitHub renders no table where the header's cells and the delimiter's differ,
        # and drops or pads the cells of a row that has more or fewer.
        width = len(cells(header))
        assert len(cells(delimiter)) == width, (page.name, header)
        for row in body:
            assert len(cells(row)) == width, (page.name, row)


def test_the_table_test_catches_a_broken_table():
    # The two tables of issue 30: three header cells over four delimiter cells.
    broken = "| a | b | c |\n|---|---|---|---|\n| 1 | 2 | 3 |\n"
    (table,) = tables(broken)
    assert len(cells(table[0])) != len(cells(table[1]))
    assert len(cells("| `a \\| b` | c |")) == 2 and len(cells("| `a | b` | c |")) == 3


def _docs_tables():
    spec = importlib.util.spec_from_file_location("docs_tables", ROOT / "tools" / "docs_tables.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_which_bug_is_in_which_release_is_written_from_the_repairs_table():
    tool = _docs_tables()
    for page in tool.PAGES:
        assert tool.rendered(page) == (ROOT / page).read_text(), (
            f"{page} is out of date: run python tools/docs_tables.py"
        )


def test_the_needs_table_follows_the_bug_ranges():
    tool = _docs_tables()
    rows = {line.split(" | ")[0][2:]: cells(line)[1:] for line in tool.needs_table()[2:]}
    # Spot checks against the releases as the issue reports them, written out here.
    assert rows["saving: an EasyGuide's next SVI step fails (`TypeError`)"] == [
        "Python 3.11+",
        "Python 3.11+",
        "no",
        "no",
    ]
    assert rows[
        "loading: `get_param_store().load()` fails on every file pyro writes (`UnpicklingError`)"
    ] == [
        "no",
        "yes",
        "no",
        "no",
    ]
    assert rows["loading: both loads run whatever code the file holds (`weights_only=False`)"] == [
        "yes",
        "no",
        "yes",
        "yes",
    ]
    assert (
        rows["saving: an AutoGuide loses its model: `guide.model` raises, nested guides fail"]
        == ["yes"] * 4
    )


@pytest.mark.parametrize("page", DOCS, ids=[p.name for p in DOCS])
def test_every_page_opens_with_the_question_it_answers(page):
    lines = [line for line in page.read_text().splitlines() if line.strip()]
    assert lines[0].startswith("# ")
    question = []
    for line in lines[1:]:
        question.append(line)
        if line.endswith("**"):
            break
    text = " ".join(question)
    assert text.startswith("**") and text.endswith("?**"), page.name


def test_the_readme_links_every_page_and_every_link_resolves():
    readme = (ROOT / "README.md").read_text()
    for page in DOCS:
        assert f"](docs/{page.name}" in readme, page.name
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), (page.name, target)


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_no_place_left_for_other_text_is_still_empty(page):
    # The places docs/ left for the loader's, the save side's and the matrix's text
    # (issues 28-31) are filled; a marker left behind is text still to be written.
    assert "<!-- place:" not in page.read_text()


def test_the_compatibility_table_is_written_into_its_page(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "compat_table", ROOT / "tools" / "compat_table.py"
    )
    assert spec is not None and spec.loader is not None
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    results = tmp_path / "results"
    results.mkdir()
    versions = {"python": "3.11.7", "torch": "2.13.0", "pyro-ppl": "1.9.2", "wrapt": "2.5.2"}
    side = {"original": {"ok": True, "error": None, "unchanged": True}, "loaded": {"ok": True}}
    stock = {"original": {"ok": True, "error": None, "unchanged": False}, "loaded": {"ok": True}}
    outcome = {
        "without_fix": {**stock, "versions": versions},
        "with_fix": {**side, "versions": versions},
        "param_store_stock": "loads, trusting the file",
        "param_store_fixed": "loads, weights-only",
    }
    (results / "py3.11-pyro1.9.2-wrapt2.json").write_text(__import__("json").dumps(outcome))
    (results / "py3.11-pyro1.9.2-wrapt2.xml").write_text(
        '<testsuite tests="3" failures="0" errors="0" skipped="1"/>'
    )
    page = tmp_path / "compatibility.md"
    original = (ROOT / "docs" / "compatibility.md").read_text()
    page.write_text(original)
    assert tool.main(str(results), str(page)) == 0
    (table,) = [t for t in tables(page.read_text()) if t[0].startswith("| pyro-ppl | wrapt")]
    assert len(table) == 3 and all(len(cells(row)) == 9 for row in table)
    assert cells(table[2])[:4] == ["1.9.2", "2.5.2", "3.11.7", "2.13.0"]
    assert "trains, but was changed" in table[2]
    # Only the table changed; dev.py writes it into this page.
    assert page.read_text().split(tool.BEGIN)[0] == original.split(tool.BEGIN)[0]
    assert '"docs/compatibility.md"' in (ROOT / "dev.py").read_text()
