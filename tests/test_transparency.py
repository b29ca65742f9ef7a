"""A method the fix adds or wraps hides nothing that the class's MRO reaches
(mixins and user bases), a reference to it pickles as stock's, and pyro's changes
to a state land as pyro makes them: each case of ``tests/mro_cases.py`` gives, with
the fix, what it gives with the fix off (stock pyro, in a fresh interpreter)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from support import run_json

CASES = Path(__file__).with_name("mro_cases.py")


@pytest.fixture(scope="module")
def outcomes() -> dict[bool, dict[str, object]]:
    code = f"import runpy; runpy.run_path({str(CASES)!r}, run_name='__main__')"
    return {fix: run_json(code, fix=fix) for fix in (False, True)}


@pytest.mark.parametrize(
    "case",
    [
        # Tensor.__getstate__ and __copy__, added by the fix, defer to a mixin's.
        "tensor_subclass_with_a_mixin",
        # EasyGuide.__copy__, added by the fix, defers to a user base's.
        "easy_guide_with_a_user_base",
        # Wrapped, added and replaced methods pickle as the global stock writes.
        "method_references",
        # AutoGuide's state has master None even where a base left the weakref out.
        "guide_list_child_whose_base_leaves_out_weakrefs",
        # The children of a copied AutoGuideList keep their model.
        "copy_of_a_guide_list",
        # A tensor's state left empty by the weakref's removal is what its base makes
        # of it: {} from a base's dict, torch's fallback where __getstate__ is None.
        "tensor_state_left_empty",
        # The weakref leaves an OrderedDict state, or a dict nested in the state.
        "tensor_state_of_another_shape",
        # copy.copy of a tensor finds __reduce_ex__, __reduce__ or its error as copy does.
        "copy_of_a_tensor_without_reduce_ex",
        # A child guide with its own __new__ or state shape is copied as stock copies it.
        "copy_of_a_guide_list_with_children_of_their_own",
        # Tensor.__deepcopy__ reads nothing through a __torch_function__ before torch.
        "deepcopy_through_torch_function",
        # A method called through the class without an instance: stock's result or error.
        "calls_without_an_instance",
    ],
)
def test_the_fix_gives_what_stock_gives(outcomes, case):
    assert outcomes[True][case] == outcomes[False][case]


@pytest.mark.skipif(sys.version_info < (3, 13), reason="copy.replace is new in Python 3.13")
def test_copy_replace_of_a_guide_and_a_tensor_is_stocks(outcomes):
    assert outcomes[True]["copy_replace"] == outcomes[False]["copy_replace"]
