"""The mutation check: every repair, and every part of one, is needed by a test.

The mutants come from the table (``pyro_pickle_fix._engine.repairs()``): one per
repair, left stock; one per repair with ``requires``, installed without them; one
per repair with a ``check``, installed without it.  The engine reads the mutant
from ``PYRO_PICKLE_FIX_TEST_MUTANT``.  Each mutant's killing tests (:data:`KILLERS`)
run in a fresh pytest with it set, and must fail there.

A mutant is skipped where its repair has nothing to do (its bug is not in this
pyro-ppl, Python or torch; its library is not installed): some cell of the matrix
kills it (``tools/mutants.py`` checks that after the matrix; the Dask mutant runs
in the ``engines`` session, the only one with distributed).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

import pyro_pickle_fix
from pyro_pickle_fix import _engine
from pyro_pickle_fix._repairs import parse_version

pytestmark = pytest.mark.mutants

ROOT = Path(__file__).resolve().parents[1]
SWITCH = "PYRO_PICKLE_FIX_TEST_MUTANT"

_GUIDES = "tests/test_guides.py"
_REPAIRS = "tests/test_repairs.py"
_WITHOUT_TENSOR_STATE = (
    f"{_REPAIRS}::test_where_torch_reads_a_tensors_state_past_getstate_saving_works_as_stock",
)
_EASY = "pyro.contrib.easyguide.easyguide"

#: mutant -> the fastest tests that fail with it (node ids from the checkout's root).
KILLERS: dict[str, tuple[str, ...]] = {
    "torch._tensor:Tensor.__getstate__": (
        "tests/test_roundtrip.py::test_pyro_param_values_pickle_and_keep_their_weakref[pickle]",
    ),
    "torch._tensor:Tensor.__getstate__[check]": _WITHOUT_TENSOR_STATE,
    "torch._tensor:Tensor.__copy__": (
        f"{_REPAIRS}::test_copy_copy_of_a_pyro_param_value_keeps_pyros_weakref_as_stock_does",
    ),
    "torch._tensor:Tensor.__copy__[requires]": _WITHOUT_TENSOR_STATE,
    "torch._tensor:Tensor.__deepcopy__": (
        f"{_GUIDES}::TestAutoGuideApi::test_deepcopy_works_for_every_kind[AutoIAFNormal]",
    ),
    "pyro.nn.module:PyroModule.__getstate__": (
        f"{_GUIDES}::test_torch_save_of_a_module_with_a_held_parameter_keeps_it_usable",
    ),
    "pyro.nn.module:PyroModule.__getstate__[requires]": _WITHOUT_TENSOR_STATE,
    "pyro.params.param_store:ParamStoreDict.get_state": (
        f"{_GUIDES}::test_param_store_state_leaves_live_parameters_alone",
    ),
    "pyro.params.param_store:ParamStoreDict.get_state[requires]": _WITHOUT_TENSOR_STATE,
    "torch.distributions.transforms:Transform.__getstate__": (
        f"{_GUIDES}::test_transform_getstate_leaves_live_weakrefs",
    ),
    "pyro.poutine.guide:GuideMessenger.__getstate__": (
        f"{_GUIDES}::test_guide_messenger_getstate_keeps_the_live_trace",
    ),
    "pyro.infer.autoguide.guides:AutoGuide.__getstate__": (
        f"{_GUIDES}::TestAutoGuideApi::test_model_and_laplace_approximation_still_work[pickle5]",
    ),
    "pyro.infer.autoguide.guides:AutoGuide.__setstate__": (
        f"{_GUIDES}::TestAutoGuideApi::test_copy_copy_leaves_the_original_children_mastered_to_it",
    ),
    f"{_EASY}:Group.__getstate__": (
        "tests/test_faults.py::test_a_group_whose_guide_is_gone_fails_at_save_time_with_a_clear_error",
    ),
    f"{_EASY}:EasyGuide.__getstate__": (
        f"{_REPAIRS}::test_an_easy_guide_saved_while_a_training_step_ends_is_written_as_it_was",
    ),
    f"{_EASY}:EasyGuide.__getstate__[check]": (
        f"{_REPAIRS}::test_where_copy_rebuild_is_gone_what_builds_on_it_stays_stock_with_a_warning",
    ),
    f"{_EASY}:EasyGuide.__copy__": (
        f"{_REPAIRS}::test_copy_copy_of_an_easy_guide_shares_its_plate_cache_as_stock_does",
    ),
    f"{_EASY}:EasyGuide.__copy__[requires]": (
        f"{_REPAIRS}::test_where_pyro_defines_easyguide_getstate_copy_copy_works_as_there_without_the_fix",
    ),
    f"{_EASY}:EasyGuide.__setstate__": (
        f"{_GUIDES}::test_copy_copy_of_an_easy_guide_gets_groups_bound_to_the_copy",
    ),
    "pyro.params.param_store:ParamStoreDict.load": (
        f"{_REPAIRS}::test_a_param_store_file_that_repeats_its_data_is_refused_and_nothing_is_loaded",
    ),
    "pyro.optim.optim:PyroOptim.load": (
        f"{_REPAIRS}::test_an_optimizer_file_that_repeats_its_data_is_refused_and_nothing_is_loaded",
    ),
    "distributed.protocol.serialize:dask_serialize": (
        "tests/test_engines.py::test_dask_serialize_round_trips_every_kind_through_pickle[AutoGuideList]",
    ),
}


def declared_mutants() -> list[str]:
    """Every mutant of the table, in its order."""
    found = []
    for repair in _engine.repairs():
        found.append(repair.target)
        if repair.requires:
            found.append(f"{repair.target}[requires]")
        if repair.check is not None:
            found.append(f"{repair.target}[check]")
    return found


MUTANTS = declared_mutants()


def _installed(distribution: str) -> tuple[int, ...] | None:
    try:
        return parse_version(metadata.version(distribution))
    except metadata.PackageNotFoundError:
        return None


def why_not_here(mutant: str) -> str | None:
    """Why no test can kill the mutant in this interpreter (None: one must)."""
    repair = _engine.by_target()[mutant.partition("[")[0]]
    if importlib.util.find_spec(repair.module.split(".")[0]) is None:
        return f"{repair.package} is not installed"
    try:
        importlib.import_module(repair.trigger)
    except ImportError as error:
        return f"{repair.trigger} cannot be imported ({error})"
    pyro, torch = _installed("pyro-ppl"), _installed("torch")
    assert pyro is not None
    if repair.needed(pyro, sys.version_info[:3], torch) is False:
        here = f"pyro-ppl {metadata.version('pyro-ppl')}, Python {sys.version.split()[0]}"
        if torch is not None:
            here += f", torch {metadata.version('torch')}"
        return f"{repair.dotted} is not needed: {here} do not have its bug"
    return None


def _environment(mutant: str) -> dict[str, str]:
    # Not this session's own pytest settings (xdist's worker, a JUnit report) nor
    # the fix's switches: the fix as a user's program gets it, with the mutant.
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("PYTEST_", "PYRO_PICKLE_FIX"))
    }
    environment[SWITCH] = mutant
    return environment


@pytest.mark.parametrize("mutant", MUTANTS, ids=MUTANTS)
def test_mutant_is_killed(mutant, tmp_path):
    reason = why_not_here(mutant)
    if reason:
        pytest.skip(reason)
    repair = _engine.by_target()[mutant.partition("[")[0]]
    row = {row.target: row for row in pyro_pickle_fix.status().targets}[repair.dotted]
    assert row.wrapped, f"{repair.dotted} is not in place even unmutated: {row.note}"
    nodes = [str(ROOT / node) for node in KILLERS[mutant]]
    # Run from elsewhere: `python -m` puts its working directory first on sys.path,
    # and the checkout there would stand in for an installed package.
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-n", "0"]
    done = subprocess.run(
        [*command, *nodes],
        cwd=tmp_path,
        env=_environment(mutant),
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    tail = "\n".join(done.stdout.splitlines()[-30:] + done.stderr.splitlines()[-10:])
    assert done.returncode != 0, f"SURVIVED: {' '.join(KILLERS[mutant])} passed\n{tail}"
    assert done.returncode == 1, f"not judged: pytest exit {done.returncode}\n{tail}"


def test_every_mutant_has_a_killing_test_that_exists():
    missing = [m for m in MUTANTS if m not in KILLERS]
    stale = [m for m in KILLERS if m not in MUTANTS]
    assert not missing, f"give these mutants a killing test in KILLERS: {missing}"
    assert not stale, f"KILLERS names mutants the table does not declare: {stale}"
    for mutant, nodes in KILLERS.items():
        assert 1 <= len(nodes) <= 2, mutant
        for node in nodes:
            path, *names = node.split("::")
            source = ROOT / path
            assert source.is_file(), f"{mutant}: no {path}"
            name = re.sub(r"\[.*\]$", "", names[-1])
            assert re.search(rf"^\s*def {name}\(", source.read_text(), re.M), f"{mutant}: {node}"


def _report(path: Path, outcomes: dict[str, str]) -> None:
    """A JUnit report as pytest writes it, with test_mutant_is_killed's outcomes."""
    cases = []
    for mutant, outcome in outcomes.items():
        inner = {
            "killed": "",
            "skipped": '<skipped type="pytest.skip" message="not needed here"/>',
            "failed": '<failure message="SURVIVED">...</failure>',
        }[outcome]
        cases.append(
            f'<testcase classname="tests.test_mutants" name="test_mutant_is_killed[{mutant}]">'
            f"{inner}</testcase>"
        )
    path.write_text(
        '<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">'
        + "".join(cases)
        + "</testsuite></testsuites>"
    )


def test_after_the_matrix_a_mutant_skipped_in_every_cell_fails(tmp_path, capsys):
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import mutants as tool
    finally:
        sys.path.remove(str(ROOT / "tools"))
    a, b = "pkg.m:A.f", "pkg.m:A.f[requires]"
    _report(tmp_path / "py3.11-one.xml", {a: "killed", b: "skipped"})
    _report(tmp_path / "py3.12-two.xml", {a: "skipped", b: "killed"})
    assert tool.main(str(tmp_path)) == 0
    _report(tmp_path / "py3.12-two.xml", {a: "skipped", b: "failed"})
    assert tool.main(str(tmp_path)) == 1
    assert f"NOT KILLED {b}" in capsys.readouterr().out
    assert tool.main(str(tmp_path / "nothing")) == 1
