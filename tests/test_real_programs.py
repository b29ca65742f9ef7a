"""Real Pyro programs that nobody on this project wrote (they ship in pyro-ppl's
pyro.contrib), each trained a few steps on tiny synthetic data from one seed in
three fresh interpreters (tests/real_programs.py):

(a) stock, no saves;
(b) with the fix, saving every object the program exposes (the Forecaster /
    CompartmentalModel / CEVAE / GP module, SVI's model and guide) after every step
    through torch.save, pickle, cloudpickle, copy.deepcopy and copy.copy, and the
    param store's get_state();
(c) stock, saving the same way.

With the fix nothing raises, the losses, the final parameters and what the trained
program then computes are bit for bit those of (a), and the object loaded from the
last torch.save trains one more step.  What stock saving did is only recorded: one
line per program, shown by ``pytest -rA``.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest
from support import run_json

TESTS = Path(__file__).parent

# Written out (importing tests/real_programs.py here would import every contrib
# module into the session); test_every_program_is_tested reads the helper's list.
NAMES = [
    "Forecaster+LocScaleReparam",
    "SimpleSIRModel.fit_svi",
    "CEVAE.fit",
    "VariationalSparseGP+gp.autoguide",
    "SparseGPRegression+AutoNormal",
    "IndependentMaternGP",
    "EasyGuide",
]


def run(name: str, *, fix: bool, save: bool) -> dict[str, Any]:
    code = (
        "import sys\n"
        f"sys.path.insert(0, {str(TESTS)!r})\n"
        "import real_programs\n"
        f"real_programs.main({name!r}, {save!r})\n"
    )
    return run_json(code, fix=fix, timeout=600)  # type: ignore[no-any-return]


def first_difference(a: list[Any] | None, b: list[Any] | None) -> int | None:
    """The first step whose loss differs (or is missing), or None."""
    a, b = a or [], b or []
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def summary(plain: dict[str, Any], saved: dict[str, Any]) -> str:
    """What saving after every step did to a run, against the run without saves."""
    parts = []
    by_error: dict[str, list[str]] = {}
    for where, error in saved["errors"].items():
        by_error.setdefault(error.split(": ", 1)[1].split(": ", 1)[0], []).append(where)
    parts += [f"{', '.join(where)} raised {error}" for error, where in by_error.items()]
    if saved["changes"]:
        first = next(iter(saved["changes"].values()))
        parts.append(f"changed the live objects ({', '.join(saved['changes'])}; {first})")
    if saved["train_error"]:
        parts.append(f"training failed {saved['train_error']}")
    else:
        step = first_difference(plain["losses"], saved["losses"])
        differ = [f"losses differ from step {step}"] if step is not None else []
        differ += [f"{key} differ" for key in ("params", "outputs") if saved[key] != plain[key]]
        parts += differ or ["losses, params and outputs as without saves"]
        parts.append(f"loaded copy {saved['again']}")
    return "; ".join(parts)


@pytest.mark.slow
def test_every_program_is_tested() -> None:
    tree = ast.parse((TESTS / "real_programs.py").read_text())
    (programs,) = [
        node.value
        for node in tree.body
        if isinstance(node, ast.AnnAssign) and ast.unparse(node.target) == "PROGRAMS"
    ]
    assert isinstance(programs, ast.Dict)
    assert [ast.literal_eval(key) for key in programs.keys if key is not None] == NAMES


@pytest.mark.slow
@pytest.mark.programs
@pytest.mark.parametrize("name", NAMES)
def test_saving_after_every_step_changes_nothing(name: str) -> None:
    plain = run(name, fix=False, save=False)
    fixed = run(name, fix=True, save=True)
    stock = run(name, fix=False, save=True)
    print(f"{name}: stock: {summary(plain, stock)} | fix: {summary(plain, fixed)}")

    assert plain["train_error"] is None
    assert plain["errors"] == plain["changes"] == {}
    assert plain["steps"] >= 3
    assert fixed["errors"] == {}
    assert fixed["changes"] == {}
    assert fixed["train_error"] is None
    assert fixed["steps"] == plain["steps"]
    assert fixed["losses"] == plain["losses"]
    assert fixed["params"] == plain["params"]
    assert fixed["outputs"] == plain["outputs"]
    assert fixed["again"] == "trains"
