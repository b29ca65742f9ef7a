"""Every kind of Pyro guide x every serialization path (issue: every Pyro guide)."""

import copy
import gc
import io

import pyro
import pytest
import torch
from guides import KINDS, build, outputs
from pyro.infer import autoguide as ag
from support import (
    GUIDE_MESSENGER_BUG,
    ROUNDTRIPS,
    assert_same_tensors,
    outputs_from_seed,
    run_json,
    snapshot,
)

import pyro_pickle_fix


@pytest.mark.parametrize("path", sorted(ROUNDTRIPS))
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_serializing_leaves_the_live_graph_and_outputs_unchanged(kind, path):
    model_fn, guide, kwargs = build(kind)
    before = snapshot(guide)
    result = ROUNDTRIPS[path](guide)
    assert snapshot(guide) == before
    assert type(result) is type(guide)

    _, twin, _ = build(kind)  # same seed, never serialized
    expected = outputs_from_seed(lambda: outputs(kind, model_fn, twin, kwargs))
    assert_same_tensors(outputs_from_seed(lambda: outputs(kind, model_fn, guide, kwargs)), expected)
    if path != "copy":  # copy.copy shares the parameters just trained above
        assert_same_tensors(
            outputs_from_seed(lambda: outputs(kind, model_fn, result, kwargs)), expected
        )


def test_param_store_state_leaves_live_parameters_alone(tmp_path):
    handle = pyro.param("x", torch.zeros(3))  # real: the tensor keeps a weakref to itself
    positive = pyro.param("y", torch.ones(2), constraint=torch.distributions.constraints.positive)
    store = pyro.get_param_store()
    before = snapshot(store)
    path = tmp_path / "params.pt"
    store.save(path)
    state = store.get_state()
    assert snapshot(store) == before
    assert handle.unconstrained() is handle
    assert set(state["params"]) == {"x", "y"}
    assert state["params"] is not store._params
    assert copy.copy(state["params"])["x"] is handle  # a shallow copy shares
    deep = copy.deepcopy(state)["params"]["x"]
    assert torch.equal(deep, handle) and deep is not handle
    # As deepcopy of any pyro.param() value: the copy keeps pyro's weakref (to the
    # live tensor); stock's state had lost it because stock popped it from the store.
    assert deep.unconstrained() is handle
    pyro.clear_param_store()
    # store.load() itself trips over torch >= 2.6's weights_only default (a pyro issue).
    store.set_state(torch.load(path, weights_only=False))
    assert torch.equal(pyro.param("x"), handle)
    assert torch.allclose(pyro.param("y"), positive)


class TestAutoGuideApi:
    """The AutoGuide bug: after a save the guide lost its model and its master."""

    @pytest.mark.parametrize("path", sorted(ROUNDTRIPS))
    def test_model_and_laplace_approximation_still_work(self, path):
        _, guide, kwargs = build("AutoLaplaceApproximation")
        model = guide.model
        ROUNDTRIPS[path](guide)
        assert guide.model is model
        laplace = guide.laplace_approximation(**kwargs)
        assert isinstance(laplace, ag.AutoMultivariateNormal)

    @pytest.mark.parametrize("path", sorted(ROUNDTRIPS))
    def test_guide_list_keeps_its_masters_and_can_append(self, path):
        _, guide, _ = build("AutoGuideList")
        ROUNDTRIPS[path](guide)
        for child in guide.modules():
            if child is not guide and isinstance(child, ag.AutoGuide):
                assert child.master() is guide
        guide.append(lambda *args, **kw: {})
        assert isinstance(guide[-1], ag.AutoCallable)

    def test_copy_copy_leaves_the_original_children_mastered_to_it(self):
        _, guide, kwargs = build("AutoGuideList")
        shallow = copy.copy(guide)
        shallow_children = [m for m in shallow.modules() if m is not shallow]
        assert all(
            child.master() is shallow
            for child in shallow_children
            if isinstance(child, ag.AutoGuide)
        )
        del shallow, shallow_children
        gc.collect()
        for child in guide.modules():
            if child is not guide and isinstance(child, ag.AutoGuide):
                assert child.master() is guide
        guide(**kwargs)  # stock pyro: 'NoneType' object has no attribute 'plates'

    @pytest.mark.parametrize("kind", sorted(KINDS))
    def test_deepcopy_works_for_every_kind(self, kind):
        _, guide, _ = build(kind)
        before = snapshot(guide)
        copied = copy.deepcopy(guide)
        assert snapshot(guide) == before
        for (name, a), (_, b) in zip(
            guide.named_parameters(), copied.named_parameters(), strict=True
        ):
            assert torch.equal(a, b) and a is not b, name


# Each stock bug, shown in a fresh interpreter with the fix disabled; on releases
# without it the same code must run clean.
STOCK = """
import copy, gc, io, json, pickle, sys, torch, pyro
sys.path.insert(0, {tests!r})
from guides import build
from pyro.infer import autoguide as ag
result = {{}}
def attempt(name, action):
    try:
        action()
        result[name] = None
    except Exception as error:
        result[name] = type(error).__name__ + ": " + str(error)
{body}
print(json.dumps(result))
"""


def stock(body):
    import pathlib

    tests = str(pathlib.Path(__file__).parent)
    return run_json(STOCK.format(tests=tests, body=body), fix=False)


def test_stock_autoguide_save_breaks_model_laplace_and_append():
    found = stock(
        "model_fn, guide, kwargs = build('AutoLaplaceApproximation')\n"
        "torch.save(guide, io.BytesIO())\n"
        "attempt('model', lambda: guide.model)\n"
        "attempt('laplace', lambda: guide.laplace_approximation(**kwargs))\n"
        "from guides import train\n"
        "model_fn, glist, kw = build('AutoGuideList')\n"
        "pickle.dumps(glist)\n"
        "attempt('nested', lambda: train(model_fn, glist, kw, 1))\n"
        "attempt('append', lambda: glist.append(lambda *a, **k: {}))\n"
    )
    assert found["model"] == "TypeError: 'NoneType' object is not subscriptable"
    assert found["laplace"] is not None and "NoneType" in found["laplace"]
    assert found["append"] is not None and "NoneType" in found["append"]
    assert found["nested"].startswith("RuntimeError: Multiple sample sites named 'data'")


def test_stock_copy_copy_remasters_the_original_children():
    found = stock(
        "_, guide, kwargs = build('AutoGuideList')\n"
        "shallow = copy.copy(guide)\n"
        "del shallow; gc.collect()\n"
        "attempt('after', lambda: guide(**kwargs))\n"
    )
    assert found["after"] == "AttributeError: 'NoneType' object has no attribute 'plates'"


def test_stock_save_pops_the_weakref_from_held_parameters():
    found = stock(
        "handle = pyro.param('x', torch.zeros(2))\n"
        "pyro.get_param_store().save('/dev/null')\n"
        "attempt('store', lambda: handle.unconstrained())\n"
        "_, guide, _ = build('AutoNormal')\n"
        "held = [p for p in guide.parameters() if 'unconstrained' in p.__dict__][0]\n"
        "pickle.dumps(guide)\n"
        "attempt('module', lambda: held.unconstrained())\n"
    )
    message = "AttributeError: 'Tensor' object has no attribute 'unconstrained'"
    assert found["store"] == message
    assert found["module"] is not None and "has no attribute 'unconstrained'" in found["module"]


def test_stock_deepcopy_of_a_trained_iaf_guide_fails():
    found = stock(
        "_, guide, _ = build('AutoIAFNormal')\nattempt('deepcopy', lambda: copy.deepcopy(guide))\n"
    )
    assert found["deepcopy"].startswith("RuntimeError: Only Tensors created explicitly")


def test_stock_transform_getstate_nulls_live_weakrefs():
    from support import PY311

    found = stock(
        "import weakref, pyro.distributions as dist\n"
        "t = dist.transforms.ExpTransform()\n"
        "target = torch.zeros(1)\n"
        "t.ref = weakref.ref(target)\n"
        "t.__getstate__()\n"
        "result['live'] = t.__dict__['ref'] is None\n"
    )
    assert found["live"] is PY311


def test_transform_getstate_leaves_live_weakrefs():
    import weakref

    import pyro.distributions as dist

    transform = dist.transforms.ExpTransform()
    target = torch.zeros(1)
    ref = transform.ref = weakref.ref(target)
    state = transform.__getstate__()
    assert transform.__dict__["ref"] is ref
    assert state["ref"] is None  # what pyro writes


def test_stock_guide_messenger_getstate_drops_the_live_trace():
    from support import GUIDE_MESSENGER_BUG

    found = stock(
        "from pyro.poutine.guide import GuideMessenger\n"
        "class G(GuideMessenger):\n"
        "    def get_posterior(self, *args): pass\n"
        "g = G(lambda: None)\n"
        "g.trace = 'live trace'\n"
        "g.__getstate__()\n"
        "result['kept'] = 'trace' in g.__dict__\n"
    )
    assert found["kept"] is (not GUIDE_MESSENGER_BUG)


# Only pyro-ppl 1.8.6 on Python 3.11+ drops the live trace: the id says which this
# run is.  Where stock keeps it too, the test guards the fix and cannot show the bug.
@pytest.mark.parametrize(
    "stock", ["stock-drops-the-trace" if GUIDE_MESSENGER_BUG else "stock-keeps-it-too"]
)
def test_guide_messenger_getstate_keeps_the_live_trace(stock):
    from pyro.poutine.guide import GuideMessenger

    class G(GuideMessenger):
        def get_posterior(self, *args):
            pass

    def keeps_the_trace() -> bool:
        guide = G(lambda: None)
        guide.trace = "live trace"
        state = guide.__getstate__()
        assert "trace" not in state  # what pyro writes, with the fix and without
        return guide.__dict__.get("trace") == "live trace"

    assert keeps_the_trace(), "with the fix, the live GuideMessenger lost its trace"
    pyro_pickle_fix.unpatch()
    try:
        kept_by_stock = keeps_the_trace()
    finally:
        pyro_pickle_fix.patch()
    assert kept_by_stock is not GUIDE_MESSENGER_BUG, stock


def test_torch_save_of_a_module_with_a_held_parameter_keeps_it_usable():
    _, guide, _ = build("AutoNormal")
    held = [p for p in guide.parameters() if "unconstrained" in p.__dict__]
    assert held
    torch.save(guide, io.BytesIO())
    assert all(p.unconstrained() is p for p in held)


def test_copy_copy_of_an_easy_guide_gets_groups_bound_to_the_copy():
    _, guide, kwargs = build("EasyGuide")
    groups = dict(guide.groups)
    shallow = copy.copy(guide)
    assert {name: group.guide for name, group in shallow.groups.items()} == dict.fromkeys(
        groups, shallow
    )
    assert guide.groups == groups and all(g.guide is guide for g in guide.groups.values())
    shallow(**kwargs)  # with its own plate cache, the copy runs through its own groups
    guide(**kwargs)


def test_stock_copy_copy_of_an_easy_guide_runs_through_the_original():
    found = stock(
        "_, guide, kwargs = build('EasyGuide')\n"
        "shallow = copy.copy(guide)\n"
        "result['bound'] = all(g.guide is guide for g in shallow.groups.values())\n"
        "del guide; gc.collect()\n"
        "attempt('after', lambda: shallow(**kwargs))\n"
    )
    assert found["bound"] is True
    # The copy's Groups still point at the original guide, which is gone.
    assert found["after"] is not None and "NoneType" in found["after"], found


def test_copy_copy_of_an_easy_guide_outlives_the_original():
    _, guide, kwargs = build("EasyGuide")
    shallow = copy.copy(guide)
    del guide
    gc.collect()
    shallow(**kwargs)
    assert all(group.guide is shallow for group in shallow.groups.values())
