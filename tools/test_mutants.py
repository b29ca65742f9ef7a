"""The mutation check's own parts, without running a mutant (seconds):

.venv/bin/python -m pytest tools/test_mutants.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import mutants

TABLE = """
class Patch:
    __slots__ = ("target", "hide", "snapshot", "added")

    def __init__(self, target, hide=None, snapshot=(), added=False):
        self.target, self.hide = target, dict(hide or {})
        self.snapshot, self.added = snapshot, added


PATCHES = (
    Patch("a:A.f", hide={"_x": "_x"}, snapshot=("plates",)),
    Patch("b:B.g", added=True),
    Patch("c:C.h"),
)
BY_TARGET = {p.target: p for p in PATCHES}
"""


def _load(source: str) -> dict:
    namespace: dict = {}
    exec(compile(source, "_targets.py", "exec"), namespace)
    return namespace


@pytest.mark.parametrize("repair", ["hide", "snapshot"])
def test_a_repair_mutant_empties_that_repair_only(repair):
    table = _load(TABLE + mutants.Mutant(0, "a:A.f", repair).suffix())
    entry = table["PATCHES"][0]
    assert not getattr(entry, repair)
    other = {"hide": "snapshot", "snapshot": "hide"}[repair]
    assert getattr(entry, other)
    assert [p.target for p in table["PATCHES"]] == ["a:A.f", "b:B.g", "c:C.h"]


def test_a_bool_repair_becomes_false():
    table = _load(TABLE + mutants.Mutant(1, "b:B.g", "added").suffix())
    assert table["PATCHES"][1].added is False


def test_an_entry_mutant_removes_the_entry_from_patches_only():
    table = _load(TABLE + mutants.Mutant(1, "b:B.g", None).suffix())
    assert [p.target for p in table["PATCHES"]] == ["a:A.f", "c:C.h"]
    assert type(table["PATCHES"]) is tuple
    assert "b:B.g" in table["BY_TARGET"]  # an entry that names it still loads


def test_a_table_that_moved_fails_loudly():
    with pytest.raises(AssertionError):
        _load(TABLE + mutants.Mutant(0, "b:B.g", None).suffix())


def test_xdist_stopping_on_a_failed_test_is_a_kill_but_a_collection_error_is_not():
    stopped = "!!! xdist.dsession.Interrupted: stopping after 1 failures !!!\n"
    failed = "FAILED tests/test_x.py::test_y[a b] - AssertionError\n"
    assert mutants.tests_failed(1, "")
    assert mutants.tests_failed(2, failed + stopped)
    assert mutants._failures(failed) == ["tests/test_x.py::test_y[a b]"]
    assert not mutants.tests_failed(2, "ERROR tests/test_x.py - ImportError\n" + stopped)
    assert not mutants.tests_failed(2, failed)  # interrupted otherwise
    assert not mutants.tests_failed(4, failed)
    assert not mutants.tests_failed(None, failed)  # a timeout


@pytest.mark.parametrize(
    "session",
    [
        "tests(py3.11-pyro1.8.6-wrapt2)",
        "engines(py3.11-pyro1.9.1)",
        "tests(py3.10-pyro1.9.1-wrapt1.17)",
    ],
)
def test_cell_venvs_are_where_nox_puts_them(session, tmp_path):
    sessions = pytest.importorskip("nox.sessions")
    for nox_dir in (tmp_path, tmp_path / ("long" * 20)):
        assert mutants.nox_venv(nox_dir, session) == Path(
            sessions._normalize_path(str(nox_dir.resolve()), session)
        )


def test_every_declared_survivor_names_a_cell_and_a_reason():
    for (target, repair), (reason, cell) in mutants.UNTESTABLE.items():
        assert ":" in target and (repair is None or repair in mutants.REPAIRS)
        assert reason and cell.startswith(("tests(", "engines(")) and cell.endswith(")")
