"""The EasyGuide of Pyro's tutorial: saving it must leave it working (issue: core)."""

import copy
import gc
import json

import pyro.poutine as poutine
import pytest
import torch
from support import (
    GROUP_BUG,
    ROUNDTRIPS,
    assert_same_tensors,
    outputs_from_seed,
    run_python,
    snapshot,
)

from pyro_pickle_fix.diagnostics import tutorial as scenario


def test_reproduction_without_the_fix_shows_the_bug_where_pyro_has_it():
    done = run_python(
        "import json\n"
        "from pyro_pickle_fix.diagnostics import tutorial\n"
        "print(json.dumps(tutorial.reproduce()))",
        fix=False,
    )
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout.splitlines()[-1])
    assert outcome["fix_active"] is False
    assert outcome["loaded"]["ok"], outcome
    if GROUP_BUG:
        assert not outcome["original"]["ok"]
        assert outcome["original"]["error"].startswith("TypeError: PickleGuide.guide() missing 3")
        assert "'batch', 'subsample', and 'full_size'" in outcome["original"]["error"]
        assert not outcome["original"]["unchanged"]
    else:
        # This pyro-ppl has no Group bug, but AutoGuide/PyroModule ones: only the
        # Parameters' weakrefs change, so the guide still trains.
        assert outcome["original"]["ok"], outcome


def test_reproduction_with_the_fix_keeps_the_original_working():
    outcome = scenario.reproduce()
    assert outcome["fix_active"] is True
    assert outcome["original"] == {"ok": True, "error": None, "unchanged": True, "changes": []}
    assert outcome["autoguide"] == {"changes": [], "error": None}
    assert outcome["loaded"] == {"ok": True, "error": None}


def trained_guide(seed=0):
    outputs_from_seed(lambda: None, seed)
    guide = scenario.PickleGuide(scenario.model)
    scenario.train(guide, scenario.make_data(seed))
    return guide


@pytest.mark.parametrize("path", sorted(ROUNDTRIPS))
def test_live_dicts_and_values_keep_their_identity(path):
    guide = trained_guide()
    groups = list(guide.groups.values())
    assert groups, "the tutorial guide has a group"
    before = snapshot(guide)
    group_refs = [group.__dict__["_guide"] for group in groups]
    for _ in range(2):
        ROUNDTRIPS[path](guide)
        assert snapshot(guide) == before
    for group, ref in zip(groups, group_refs, strict=True):
        assert group.__dict__["_guide"] is ref
        assert group.guide is guide  # still a weakref to the guide, not the guide


@pytest.mark.parametrize("path", sorted(ROUNDTRIPS))
def test_original_copy_and_twin_agree_from_the_same_seed(path):
    data = scenario.make_data(0)
    original = trained_guide()
    copied = ROUNDTRIPS[path](original)
    twin = trained_guide()  # same seed, never serialized
    batch, subsample = data[:, :20], torch.arange(20)

    def outputs(guide):
        trace = poutine.trace(guide).get_trace(batch, subsample, 50)
        values = {
            name: site["value"] for name, site in trace.nodes.items() if site["type"] == "sample"
        }
        return values, scenario.train(guide, data, epochs=1)

    expected = outputs_from_seed(lambda: outputs(twin))
    if path != "copy":
        assert_same_tensors(outputs_from_seed(lambda: outputs(original)), expected)
        assert_same_tensors(outputs_from_seed(lambda: outputs(copied)), expected)
        return
    # copy.copy shares its parameters with the original, so training one trains the
    # other: each is run with the other collected.  The original, once its copy is
    # gone (its Groups must still be its own) ...
    del copied
    gc.collect()
    assert_same_tensors(outputs_from_seed(lambda: outputs(original)), expected)
    # ... and a copy, once its original is gone: it must run through Groups of its
    # own.  Stock's copy shares the original's Groups, bound to the dead original
    # ('NoneType' object has no attribute 'map_estimate').
    copied = copy.copy(trained_guide())
    gc.collect()
    assert_same_tensors(outputs_from_seed(lambda: outputs(copied)), expected)
    assert all(group.guide is copied for group in copied.groups.values())


def test_loaded_guide_is_bound_to_itself_and_its_parameters_to_nothing_live():
    # What is written is compared with stock's bytes in test_fidelity.py; here, what
    # loading those bytes gives.
    guide = trained_guide()
    held = {name for name, p in guide.named_parameters() if "unconstrained" in p.__dict__}
    assert held
    loaded = ROUNDTRIPS["torch.save"](guide)
    assert type(loaded) is type(guide)
    assert loaded.__dict__.keys() == guide.__dict__.keys()
    for name, group in loaded.groups.items():
        assert group.guide is loaded  # pyro's __setstate__ re-weakrefs to the new guide
        assert group.__dict__.keys() == guide.groups[name].__dict__.keys()
    for (name, a), (_, b) in zip(guide.named_parameters(), loaded.named_parameters(), strict=True):
        assert torch.equal(a, b), name
        assert "unconstrained" not in b.__dict__  # as after pyro's own pop
        assert ("unconstrained" in a.__dict__) is (name in held)  # the live one keeps it
