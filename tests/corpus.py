"""A corpus of genuine files, written by pyro itself: the param-store and optimizer
files that users' programs save, generated here (never checked in) in a fresh
interpreter with the fix off (``PYRO_PICKLE_FIX=0``), so every byte is stock's.

``tests/test_corpus.py`` holds the rule: each file loads through the fix and gives
exactly what torch's weights-only unpickler gives for it.

Run as ``python tests/corpus.py DIR`` to write every file of :data:`SPECS` into
``DIR`` and a manifest (``DIR/manifest.json``: name -> what failed to write, if
anything).  The names are known without writing anything (:data:`SPECS`), so a
test can be parametrized over them at collection.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyro
import pyro.distributions as dist
import pyro.optim
import pyro.optim.pytorch_optimizers
import torch
from pyro.contrib.easyguide import EasyGuide
from pyro.distributions import constraints as pyro_constraints
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO, config_enumerate
from pyro.infer import autoguide as ag
from pyro.nn import PyroModule, PyroParam

constraints = torch.distributions.constraints

# ---------------------------------------------------------------------------
# Distributions: every one of pyro.distributions whose support is constrained
# and continuous (a discrete support has no transform, so no parameter of pyro's
# has it), each made with small arguments.

_ONES3 = torch.ones(3)


def _distributions() -> dict[str, Callable[[], Any]]:
    d = dist
    return {
        "AffineBeta": lambda: d.AffineBeta(torch.tensor(2.0), torch.tensor(3.0), -1.0, 4.0),
        "Beta": lambda: d.Beta(2.0, 3.0),
        "Chi2": lambda: d.Chi2(3.0),
        "ContinuousBernoulli": lambda: d.ContinuousBernoulli(probs=0.3),
        "Delta": lambda: d.Delta(torch.tensor(0.5)),
        "Dirichlet": lambda: d.Dirichlet(_ONES3),
        "Exponential": lambda: d.Exponential(2.0),
        "ExpandedDistribution": lambda: d.Gamma(2.0, 1.0).expand([2]),
        "FisherSnedecor": lambda: d.FisherSnedecor(3.0, 4.0),
        "FoldedDistribution": lambda: d.FoldedDistribution(d.Normal(0.5, 1.0)),
        "Gamma": lambda: d.Gamma(2.0, 1.0),
        "GeneralizedPareto": lambda: d.GeneralizedPareto(0.0, 1.0, -0.5),
        "HalfCauchy": lambda: d.HalfCauchy(1.0),
        "HalfNormal": lambda: d.HalfNormal(1.0),
        "ImproperUniform": lambda: d.ImproperUniform(constraints.greater_than(2.0), (), ()),
        "Independent": lambda: d.Gamma(torch.full((2,), 2.0), 1.0).to_event(1),
        "InverseGamma": lambda: d.InverseGamma(2.0, 1.0),
        "Kumaraswamy": lambda: d.Kumaraswamy(2.0, 2.0),
        "LKJ": lambda: d.LKJ(3, 1.5),
        "LKJCholesky": lambda: d.LKJCholesky(3, 1.5),
        "LKJCorrCholesky": lambda: d.LKJCholesky(3, 1.5),  # LKJCorrCholesky is its old name
        "LogNormal": lambda: d.LogNormal(0.0, 1.0),
        "LogisticNormal": lambda: d.LogisticNormal(torch.zeros(2), torch.ones(2)),
        "MaskedDistribution": lambda: d.Gamma(2.0, 1.0).mask(True),
        "Pareto": lambda: d.Pareto(1.0, 2.0),
        "ProjectedNormal": lambda: d.ProjectedNormal(_ONES3),
        "RelaxedBernoulli": lambda: d.RelaxedBernoulli(torch.tensor(0.5), probs=0.3),
        "RelaxedBernoulliStraightThrough": lambda: d.RelaxedBernoulliStraightThrough(
            torch.tensor(0.5), probs=0.3
        ),
        "RelaxedOneHotCategorical": lambda: d.RelaxedOneHotCategorical(
            torch.tensor(0.5), probs=_ONES3 / 3
        ),
        "RelaxedOneHotCategoricalStraightThrough": lambda: (
            d.RelaxedOneHotCategoricalStraightThrough(torch.tensor(0.5), probs=_ONES3 / 3)
        ),
        "TransformedDistribution": lambda: d.TransformedDistribution(
            d.Normal(torch.zeros(3), 1.0).to_event(1),
            torch.distributions.CatTransform(
                [d.transforms.ExpTransform(), d.transforms.SigmoidTransform()], -1, [2, 1]
            ),
        ),
        "TruncatedPolyaGamma": lambda: d.TruncatedPolyaGamma(torch.tensor(0.0)),
        "Uniform": lambda: d.Uniform(-1.0, torch.tensor(2.0)),
        "Weibull": lambda: d.Weibull(1.0, 2.0),
        "Wishart": lambda: d.Wishart(4.0, covariance_matrix=torch.eye(2)),
    }


DISTRIBUTIONS = _distributions()

#: The rest of pyro.distributions, and why no parameter ever has their support.
NOT_IN_THE_CORPUS = {
    **dict.fromkeys(
        [
            "AVFMultivariateNormal",
            "AsymmetricLaplace",
            "Cauchy",
            "Empirical",
            "GaussianHMM",
            "GaussianMRF",
            "GammaGaussianHMM",
            "GaussianScaleMixture",
            "GroupedNormalNormal",
            "Gumbel",
            "IndependentHMM",
            "LinearHMM",
            "Laplace",
            "Logistic",
            "LowRankMultivariateNormal",
            "MixtureOfDiagNormals",
            "MixtureOfDiagNormalsSharedCovariance",
            "MultivariateNormal",
            "MultivariateStudentT",
            "NanMaskedMultivariateNormal",
            "NanMaskedNormal",
            "Normal",
            "OMTMultivariateNormal",
            "SineBivariateVonMises",
            "SineSkewed",
            "SkewLogistic",
            "SoftAsymmetricLaplace",
            "SoftLaplace",
            "Stable",
            "StableWithLogProb",
            "StudentT",
            "Unit",
            "VonMises",
        ],
        "real support (the unconstrained files cover it)",
    ),
    **dict.fromkeys(
        [
            "Bernoulli",
            "BetaBinomial",
            "Binomial",
            "Categorical",
            "DirichletMultinomial",
            "DiscreteHMM",
            "ExtendedBetaBinomial",
            "ExtendedBinomial",
            "GammaPoisson",
            "Geometric",
            "LogNormalNegativeBinomial",
            "Multinomial",
            "NegativeBinomial",
            "OneHotCategorical",
            "OneHotCategoricalStraightThrough",
            "OneOneMatching",
            "OneTwoMatching",
            "OrderedLogistic",
            "Poisson",
            "SpanningTree",
            "ZeroInflatedDistribution",
            "ZeroInflatedNegativeBinomial",
            "ZeroInflatedPoisson",
        ],
        "discrete support: no transform maps onto it, so no parameter has it "
        "(AutoDiscreteParallel's file stands for their guides)",
    ),
    "ExponentialFamily": "abstract base",
    "TorchDistribution": "abstract base",
    "MaskedMixture": "support of its components (Gamma's, in the file of MaskedDistribution)",
    "Rejector": "abstract: a subclass defines the proposal and its support",
    "CoalescentTimes": "no transform maps onto its support (pyro.param cannot make a "
    "parameter of it; quirk-untransformable-constraints holds the constraint)",
    "CoalescentTimesWithRate": "likewise",
    "MixtureSameFamily": "likewise",
    "VonMises3D": "AutoDelta refuses a spherical site (ProjectedNormal's file holds the sphere)",
}

#: Distributions whose ``expand`` fails in pyro or torch: outside a plate only.
NO_PLATE = {"LKJ", "TruncatedPolyaGamma"}


def _site(name: str, fn: Any) -> Any:
    return pyro.sample(name, fn)


def _model_of(names: list[str]) -> Callable[[], None]:
    """A model with each distribution of ``names`` at a site of its own outside any
    plate and inside a plate (where its bounds are expanded: stride 0)."""

    def model() -> None:
        for name in names:
            _site(f"{name}_global", DISTRIBUTIONS[name]())
        with pyro.plate("N", 5):
            for name in set(names) - NO_PLATE:
                fn = DISTRIBUTIONS[name]()
                if fn.batch_shape:  # already batched: one more plate axis on the left
                    fn = fn.expand(torch.Size([5, *fn.batch_shape])).to_event(len(fn.batch_shape))
                _site(f"{name}_plated", fn)

    return model


#: A small model for the guides whose files do not depend on the supports: a
#: global and a plated constrained site, and an observed one.
def small_model(data: torch.Tensor | None = None) -> None:
    rate = pyro.sample("rate", dist.Gamma(2.0, 1.0))
    loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
    with pyro.plate("N", 4):
        scale = pyro.sample("scale", dist.Pareto(1.0, 2.0))
        pyro.sample("x", dist.Normal(loc, scale / rate), obs=data)


DATA = torch.tensor([0.3, -1.2, 0.8, 2.0])

# ---------------------------------------------------------------------------
# The writers: each makes pyro write one file at ``path``.

Writer = Callable[[Path], None]
SPECS: dict[str, tuple[str, Writer]] = {}


def _store(name: str) -> Callable[[Writer], Writer]:
    def register(writer: Writer) -> Writer:
        SPECS[name] = ("store", writer)
        return writer

    return register


def _save_store(path: Path) -> None:
    pyro.get_param_store().save(str(path))


def _init(guide: Any, *args: Any) -> Any:
    """Initialises a guide's parameters as SVI's first step does."""
    with pyro.poutine.trace(param_only=True):
        guide(*args)
    return guide


def _store_of_guide(make: Callable[[], Any], model: Any, *args: Any) -> Writer:
    def write(path: Path) -> None:
        guide = make()
        _init(guide, *args)
        _save_store(path)

    return write


#: How each AutoGuide is made over a model (the class alone, unless told here).
_AUTOGUIDES: dict[str, Callable[[Any], Any]] = {
    "AutoDelta": lambda model: ag.AutoDelta(model),
    "AutoNormal": lambda model: ag.AutoNormal(model),
    "AutoDiagonalNormal": lambda model: ag.AutoDiagonalNormal(model),
    "AutoMultivariateNormal": lambda model: ag.AutoMultivariateNormal(model),
    "AutoLowRankMultivariateNormal": lambda model: ag.AutoLowRankMultivariateNormal(model, rank=2),
    "AutoLaplaceApproximation": lambda model: ag.AutoLaplaceApproximation(model),
    "AutoIAFNormal": lambda model: ag.AutoIAFNormal(model, hidden_dim=[8], num_transforms=2),
    "AutoNormalizingFlow": lambda model: ag.AutoNormalizingFlow(
        model, functools.partial(dist.transforms.iterated, 2, dist.transforms.planar)
    ),
    "AutoStructured": lambda model: ag.AutoStructured(
        model,
        conditionals={"rate": "delta", "loc": "normal", "scale": "mvn"},
        dependencies={"loc": {"rate": "linear"}},
    ),
    "AutoGaussian": lambda model: ag.AutoGaussian(model),
    "AutoNormalMessenger": lambda model: ag.AutoNormalMessenger(model),
    "AutoHierarchicalNormalMessenger": lambda model: ag.AutoHierarchicalNormalMessenger(model),
    "AutoRegressiveMessenger": lambda model: ag.AutoRegressiveMessenger(model),
    "AutoGuideList": lambda model: _guide_list(model),
    "AutoCallable": lambda model: ag.AutoCallable(model, _callable_guide),
}

#: AutoGuide classes with no file of their own, and why.
AUTOGUIDES_ELSEWHERE = {
    "AutoGuide": "abstract base",
    "AutoContinuous": "abstract base",
    "AutoMessenger": "abstract base",
    "AutoDiscreteParallel": "a file of its own, over a discrete model",
}


def _callable_guide(data: torch.Tensor) -> None:
    rate = pyro.param("rate_map", torch.tensor(2.0), constraints.positive)
    pyro.sample("rate", dist.Delta(rate))
    pyro.sample("loc", dist.Delta(pyro.param("loc_map", torch.tensor(0.0))))
    with pyro.plate("N", 4):
        scale = pyro.param("scale_map", torch.full((4,), 2.0), constraints.greater_than(1.0))
        pyro.sample("scale", dist.Delta(scale))


def _guide_list(model: Any) -> Any:
    guide = ag.AutoGuideList(model)
    guide.append(ag.AutoDelta(pyro.poutine.block(model, expose=["rate"])))
    guide.append(ag.AutoNormal(pyro.poutine.block(model, hide=["rate"])))
    return guide


for _name, _make in _AUTOGUIDES.items():
    if not hasattr(ag, _name):  # an older pyro-ppl
        continue
    _store(f"autoguide-{_name}")(
        _store_of_guide(functools.partial(_make, small_model), small_model, DATA)
    )


@config_enumerate
def _discrete_model() -> None:
    probs = pyro.sample("probs", dist.Dirichlet(_ONES3))
    with pyro.plate("N", 4):
        pyro.sample("z", dist.Categorical(probs))


@_store("autoguide-AutoDiscreteParallel")
def _discrete_parallel(path: Path) -> None:
    model = pyro.poutine.block(_discrete_model, hide=["probs"])
    guide = ag.AutoDiscreteParallel(model)
    SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), TraceEnum_ELBO(max_plate_nesting=1)).step()
    _save_store(path)


def _within(site: dict[str, Any]) -> torch.Tensor:
    fn = site["fn"]
    return torch.distributions.biject_to(fn.support)(torch.zeros(fn.shape()))


for _dist in DISTRIBUTIONS:
    if not hasattr(dist, _dist):  # an older pyro-ppl
        continue
    # AutoDelta keeps each site's support as its parameter's constraint.
    # ImproperUniform cannot be sampled: its users start from a point within.
    _init_loc = _within if _dist == "ImproperUniform" else ag.init_to_median
    _store(f"autodelta-{_dist}")(
        _store_of_guide(
            functools.partial(ag.AutoDelta, _model_of([_dist]), init_loc_fn=_init_loc), None
        )
    )


class _Easy(EasyGuide):  # type: ignore[misc]
    def guide(self, data: torch.Tensor) -> None:
        self.map_estimate("rate")
        group = self.group(match="loc|scale")
        loc = pyro.param("easy_loc", torch.zeros(group.event_shape))
        scale = pyro.param(
            "easy_scale", torch.ones(group.event_shape), constraint=constraints.positive
        )
        group.sample("joint", dist.Normal(loc, scale).to_event(1))


_store("easyguide")(_store_of_guide(lambda: _Easy(small_model), small_model, DATA))

# ---------------------------------------------------------------------------
# PyroModules with a PyroParam of every constraint torch and pyro define: each
# public constraint object, and each constraint class made with tensor arguments.


def _every_constraint() -> dict[str, Any]:
    """name -> a constraint whose parameter can be made (``transform_to`` has it)."""
    found: dict[str, Any] = {}
    for module in (constraints, pyro_constraints):
        for name in getattr(module, "__all__", dir(module)):
            value = getattr(module, name, None)
            if isinstance(value, constraints.Constraint):
                found[name] = value
    lower, upper = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 3.0, 5.0])
    found.update(
        greater_than_tensor=constraints.greater_than(lower),
        greater_than_eq_tensor=constraints.greater_than_eq(lower),
        less_than_tensor=constraints.less_than(upper),
        interval_tensor=constraints.interval(lower, upper),
        half_open_interval_tensor=constraints.half_open_interval(lower, upper),
        interval_expanded=constraints.interval(
            torch.tensor(-1.0).expand(3), torch.tensor(1.0).expand(3)
        ),
        independent_interval=constraints.independent(constraints.interval(lower, upper), 1),
        stack=constraints.stack([constraints.positive, constraints.interval(0.0, 1.0)], dim=0),
        cat=constraints.cat(
            [constraints.positive, constraints.greater_than(lower[:2])], dim=0, lengths=[1, 2]
        ),
    )
    return found


def _init_for(constraint: Any, shape: tuple[int, ...]) -> torch.Tensor | None:
    """A value within ``constraint`` (None if no transform reaches it)."""
    try:
        transform = torch.distributions.transform_to(constraint)
    except NotImplementedError:
        return None
    for unconstrained in (torch.randn(shape), torch.randn(3, 3), torch.randn(3)):
        try:
            value = transform(unconstrained)
        except (RuntimeError, ValueError, IndexError):
            continue
        if bool(constraint.check(value).all()):
            return value.detach()
    return None


class _Every(PyroModule):  # type: ignore[misc]
    """A PyroModule with one PyroParam per constraint."""

    def forward(self) -> None:
        for name in list(self._pyro_params):
            getattr(self, name)  # within forward, reading a PyroParam calls pyro.param


@_store("pyromodule-every-constraint")
def _every_pyroparam(path: Path) -> None:
    module = _Every()
    for index, (name, constraint) in enumerate(sorted(_every_constraint().items())):
        shape = (3,) if name == "cat" else (2,)
        value = _init_for(constraint, shape)
        if value is not None:
            setattr(module, f"p{index}_{name}", PyroParam(value, constraint))
    module()
    _save_store(path)


# ---------------------------------------------------------------------------
# Tensors of every dtype and shape users train, and pyro's own quirks.


@_store("dtypes-and-shapes")
def _dtypes(path: Path) -> None:
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        name = str(dtype).removeprefix("torch.")
        pyro.param(f"{name}_vector", torch.arange(3.0, dtype=dtype))
        pyro.param(f"{name}_positive", torch.ones(2, 2, dtype=dtype), constraints.positive)
        pyro.param(f"{name}_scalar", torch.tensor(0.5, dtype=dtype), constraints.unit_interval)
        pyro.param(f"{name}_empty", torch.zeros(0, 3, dtype=dtype))
    pyro.param("complex64", torch.ones(2, dtype=torch.complex64))
    pyro.param("transposed", torch.arange(6.0).reshape(2, 3).t())
    pyro.param("scalar_0dim", torch.tensor(3.0), constraints.greater_than(1.0))
    _save_store(path)


@_store("quirk-failed-lazy-init")
def _failed_lazy_init(path: Path) -> None:
    """pyro's setdefault keeps the constraint of a parameter whose lazy initial
    value raised: the file holds more constraints than parameters."""
    pyro.param("a", torch.ones(2), constraints.positive)
    pyro.param("b", torch.zeros(2))

    def broken() -> torch.Tensor:
        raise ValueError("the data was not there yet")

    with contextlib.suppress(ValueError):
        pyro.param("c", broken, constraints.positive)
    _save_store(path)


@_store("quirk-untransformable-constraints")
def _untransformable(path: Path) -> None:
    """pyro.param with a constraint no transform reaches (a discrete support, say)
    raises after setdefault kept the constraint: a constraint without a parameter,
    of every class that has no transform."""
    pyro.param("kept", torch.ones(2), constraints.positive)
    made = {
        "integer": pyro_constraints.integer,
        "boolean": constraints.boolean,
        "nonnegative_integer": constraints.nonnegative_integer,
        "integer_interval": constraints.integer_interval(0, 3),
        "one_hot": constraints.one_hot,
        "multinomial": constraints.multinomial(4),
        "integer_less_than": constraints._IntegerLessThan(3),  # torch names no instance
        "coalescent": _coalescent_support(),
        "mixture": dist.MixtureSameFamily(
            dist.Categorical(torch.ones(2)), dist.Gamma(torch.tensor([1.0, 2.0]), 1.0)
        ).support,
    }
    for name, constraint in made.items():
        with contextlib.suppress(NotImplementedError):
            pyro.param(name, torch.ones(2), constraint)
    _save_store(path)


def _coalescent_support() -> Any:
    return dist.CoalescentTimes(torch.tensor([0.0, 0.0, 0.5])).support


@_store("quirk-parameter-with-attribute")
def _parameter_with_attribute(path: Path) -> None:
    """A module Parameter carrying a Python attribute: torch writes it with
    ``_rebuild_parameter_with_state``."""
    net = torch.nn.Linear(3, 2)
    net.bias._no_weight_decay = True  # type: ignore[attr-defined]
    pyro.module("net", net)
    _save_store(path)


def _subsample_model(data: torch.Tensor) -> None:
    loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
    with pyro.plate("data", 20, subsample_size=5) as idx:
        z = pyro.sample("z", dist.Normal(loc, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=data[idx])


def _subsample_guide(data: torch.Tensor) -> None:
    with pyro.plate("data", 20, subsample_size=5):
        loc = pyro.param("q_loc", torch.zeros(20), event_dim=0)
        pyro.sample("z", dist.Normal(loc, 1.0))
    pyro.sample("loc", dist.Delta(pyro.param("q_mu", torch.tensor(0.0))))


@_store("quirk-minibatch-autonormal")
def _minibatch_autonormal(path: Path) -> None:
    """Minibatch SVI: pyro's plate sets ``param._pyro_subsample = {-1: indices}``
    on AutoNormal's Parameters, and torch saves it."""
    guide = ag.AutoNormal(_subsample_model)
    SVI(_subsample_model, guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO()).step(torch.randn(20))
    _save_store(path)


@_store("quirk-minibatch-guide")
def _minibatch_guide(path: Path) -> None:
    """A hand-written guide's ``pyro.param(..., event_dim=0)`` in a subsampled
    plate: a plain tensor with ``_pyro_subsample`` (``_rebuild_from_type_v2``)."""
    optim = pyro.optim.Adam({"lr": 0.01})
    SVI(_subsample_model, _subsample_guide, optim, Trace_ELBO()).step(torch.randn(20))
    _save_store(path)


@_store("quirk-tensor-attributes")
def _tensor_attributes(path: Path) -> None:
    """Python attributes on a pyro.param's tensor and on module Parameters: a
    string, a tuple, a tensor, and a scalar under a Tensor method's name."""
    pyro.param("w", torch.zeros(3)).tag = "encoder"  # type: ignore[attr-defined]
    net = torch.nn.Linear(3, 2)
    net.weight.shard_shape = (2, 3)  # type: ignore[attr-defined]
    net.weight.mask = torch.ones(2, 3)  # type: ignore[attr-defined]
    net.bias.std = 0.1  # type: ignore[assignment]
    pyro.module("net", net)
    _save_store(path)


@_store("quirk-empty-views")
def _empty_views(path: Path) -> None:
    """The rows of an empty matrix: empty views at offsets past their storage."""
    for index, row in enumerate(torch.zeros(4, 0).unbind(0)):
        pyro.param(f"w{index}", row)
    _save_store(path)


@_store("quirk-overlapping-bound")
def _overlapping_bound(path: Path) -> None:
    """A bound that is an ``unfold()`` view: its windows overlap in its storage."""
    low = torch.arange(6.0).unfold(0, 3, 1)
    pyro.param("x", low + 1.0, constraints.greater_than(low))
    _save_store(path)


# ---------------------------------------------------------------------------
# Optimizer files: every optimizer pyro.optim wraps, and every scheduler.


def _optim(name: str) -> Callable[[Writer], Writer]:
    def register(writer: Writer) -> Writer:
        SPECS[name] = ("optim", writer)
        return writer

    return register


def _train(
    optim: Any, steps: int = 2, *, scheduler_step: Callable[[Any, float], None] | None = None
) -> None:
    guide = ag.AutoNormal(small_model)
    svi = SVI(small_model, guide, optim, Trace_ELBO())
    for _ in range(steps):
        loss = svi.step(DATA)
        if scheduler_step is not None:
            scheduler_step(optim, loss)


_OPTIMIZER_ARGS: dict[str, dict[str, Any]] = {
    "Adam": {"lr": 0.01, "amsgrad": True},
    "AdamW": {"lr": 0.01},
    "SGD": {"lr": 0.01, "momentum": 0.9, "nesterov": True},
    "Adafactor": {"lr": 0.01},
    "ASGD": {"lr": 0.01},
    "Rprop": {"lr": 0.01},
}
#: Optimizers pyro.optim wraps that no SVI program can step, and why.
OPTIMIZERS_ELSEWHERE = {
    "SparseAdam": "needs sparse gradients, which no pyro.param has",
    "Muon": "steps only 2-d parameters; a file of its own with a matrix parameter",
}


def _optimizer_names() -> list[str]:
    names = []
    for name in pyro.optim.pytorch_optimizers.__all__:
        made = getattr(torch.optim, name, None)
        if isinstance(made, type) and issubclass(made, torch.optim.Optimizer):
            names.append(name)
    return names


def _optimizer_writer(name: str) -> Writer:
    def write(path: Path) -> None:
        optim = getattr(pyro.optim, name)(dict(_OPTIMIZER_ARGS.get(name, {"lr": 0.01})))
        _train(optim)
        optim.save(str(path))

    return write


for _name in _optimizer_names():
    if _name not in OPTIMIZERS_ELSEWHERE:
        _optim(f"optimizer-{_name}")(_optimizer_writer(_name))

for _name, _make_optim in {
    "ClippedAdam": lambda: pyro.optim.ClippedAdam({"lr": 0.01, "clip_norm": 5.0}),
    "AdagradRMSProp": lambda: pyro.optim.AdagradRMSProp({"eta": 0.1}),
    "DCTAdam": lambda: pyro.optim.DCTAdam({"lr": 0.01}),
    "Adam-clip_args": lambda: pyro.optim.Adam({"lr": 0.01}, {"clip_norm": 1.0}),
    "Adam-per-parameter": lambda: pyro.optim.Adam(lambda name, param: {"lr": 0.01 * len(name)}),
}.items():

    def _write_pyro_optim(path: Path, make: Callable[[], Any] = _make_optim) -> None:
        optim = make()
        _train(optim)
        optim.save(str(path))

    _optim(f"optimizer-{_name}")(_write_pyro_optim)


@_optim("optimizer-reused-after-clear")
def _reused(path: Path) -> None:
    """An optimizer reused across ``pyro.clear_param_store()``: pyro writes the
    state of the parameters that left the store under the key None."""
    optim = pyro.optim.Adam({"lr": 0.01})
    _train(optim)
    pyro.clear_param_store()
    _train(optim)
    optim.save(str(path))


@_optim("optimizer-float64-training")
def _float64(path: Path) -> None:
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        optim = pyro.optim.Adam({"lr": 0.01})
        _train(optim)
        optim.save(str(path))
    finally:
        torch.set_default_dtype(before)


def _half_model() -> None:
    pyro.sample("x", dist.Normal(0.0, 1.0), obs=torch.tensor(0.5))


def _half_guide() -> None:
    for dtype in (torch.float16, torch.bfloat16):
        name = str(dtype).removeprefix("torch.")
        pyro.param(name, torch.ones(3, dtype=dtype))
        pyro.param(f"{name}_positive", torch.ones(2, dtype=dtype), constraints.positive)


@_optim("optimizer-half-precision")
def _half(path: Path) -> None:
    params: list[torch.Tensor] = []
    optim = pyro.optim.Adam({"lr": 0.01})
    _half_guide()
    store = pyro.get_param_store()
    for _ in range(2):
        params = [store._params[name] for name in store]
        loss = sum(param.float().square().sum() for param in params)
        loss.backward()  # type: ignore[union-attr]
        optim(params)
        for param in params:
            param.grad = None
    optim.save(str(path))


def _muon(path: Path) -> None:
    pyro.param("matrix", torch.randn(3, 4))
    store = pyro.get_param_store()
    optim = pyro.optim.Muon({"lr": 0.01})
    for _ in range(2):
        params = [store._params["matrix"]]
        params[0].square().sum().backward()
        optim(params)
        params[0].grad = None
    optim.save(str(path))


if hasattr(pyro.optim, "Muon"):  # torch 2.9+
    _optim("optimizer-Muon")(_muon)


def _scheduler_steps(name: str) -> Callable[[Any, float], None]:
    if name == "ReduceLROnPlateau":
        return lambda optim, loss: optim.step(loss)
    return lambda optim, loss: optim.step()


_SCHEDULER_ARGS: dict[str, dict[str, Any]] = {
    "LambdaLR": {"lr_lambda": lambda epoch: 0.9**epoch},
    "MultiplicativeLR": {"lr_lambda": lambda epoch: 0.9},
    "StepLR": {"step_size": 1, "gamma": 0.5},
    "MultiStepLR": {"milestones": [1, 3, 3], "gamma": 0.5},
    "ConstantLR": {"factor": 0.5, "total_iters": 2},
    "LinearLR": {"start_factor": 0.5, "total_iters": 4},
    "ExponentialLR": {"gamma": 0.9},
    "PolynomialLR": {"total_iters": 4, "power": 2.0},
    "CosineAnnealingLR": {"T_max": 4},
    "ReduceLROnPlateau": {"patience": 0, "factor": 0.5},
    "CyclicLR": {"base_lr": 0.001, "max_lr": 0.1, "step_size_up": 2},
    "CyclicLR-exp_range": {"base_lr": 0.001, "max_lr": 0.1, "mode": "exp_range"},
    "CosineAnnealingWarmRestarts": {"T_0": 2},
    "OneCycleLR": {"max_lr": 0.1, "total_steps": 10},
}
#: Schedulers pyro.optim wraps with no file of their own, and why.
SCHEDULERS_ELSEWHERE = {
    "LRScheduler": "abstract base",
    "_LRScheduler": "abstract base (the old name)",
    "SequentialLR": "takes schedulers of the same optimizer, which PyroLRScheduler cannot "
    "make (it makes one optimizer a parameter)",
    "ChainedScheduler": "likewise: its first argument is a list of schedulers",
}


def _scheduler_writer(name: str) -> Writer:
    cls = name.split("-")[0]
    base = torch.optim.SGD if cls in ("CyclicLR", "OneCycleLR") else torch.optim.Adam
    optim_args: dict[str, Any] = {"lr": 0.01}
    if base is torch.optim.SGD:
        optim_args["momentum"] = 0.9

    def write(path: Path) -> None:
        args = {"optimizer": base, "optim_args": dict(optim_args), **_SCHEDULER_ARGS[name]}
        optim = getattr(pyro.optim, cls)(args)
        _train(optim, 3, scheduler_step=_scheduler_steps(cls))
        optim.save(str(path))

    return write


for _name in _SCHEDULER_ARGS:
    if hasattr(pyro.optim, _name.split("-")[0]):
        _optim(f"scheduler-{_name}")(_scheduler_writer(_name))

#: The four files of issue 28 that main's loader refused.
ISSUE_28 = (
    "autodelta-Pareto",
    "scheduler-MultiStepLR",
    "quirk-failed-lazy-init",
    "quirk-parameter-with-attribute",
)


def schedulers_pyro_wraps() -> list[str]:
    """The schedulers :mod:`pyro.optim` wraps on this torch."""
    names = []
    for name in pyro.optim.pytorch_optimizers.__all__:
        made = getattr(torch.optim.lr_scheduler, name, None)
        if isinstance(made, type):
            names.append(name)
    return names


# ---------------------------------------------------------------------------
# Writing them


def write(directory: Path, names: list[str] | None = None) -> dict[str, str | None]:
    """Writes each file of :data:`SPECS` (or those of ``names``) into ``directory``:
    name -> None, or why pyro could not write it on this pyro and torch."""
    written: dict[str, str | None] = {}
    for name in names or list(SPECS):
        _, writer = SPECS[name]
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        try:
            writer(directory / f"{name}.pt")
        except Exception as error:  # reported by the test, per file
            written[name] = f"{type(error).__name__}: {error}"[:500]
        else:
            written[name] = None
    pyro.clear_param_store()
    return written


def main(argv: list[str]) -> None:
    directory = Path(argv[0])
    directory.mkdir(parents=True, exist_ok=True)
    manifest = write(directory, argv[1:] or None)
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
