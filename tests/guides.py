"""Small models and every kind of guide the suite serializes, each trained a few
steps so that it has parameters, a prototype trace and pyro's weakrefs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.contrib.easyguide import EasyGuide
from pyro.infer import SVI, Trace_ELBO
from pyro.infer import autoguide as ag
from pyro.nn import PyroModule, PyroParam, PyroSample
from pyro.optim import Adam

DATA = torch.linspace(-1.0, 2.0, 12)


def model(data: torch.Tensor = DATA, latents: int = 2, subsample_size: int | None = None) -> None:
    """Global latents, and a local latent per data point in a (subsampled) plate."""
    loc = 0.0
    for i in range(latents):
        loc = loc + pyro.sample(f"g{i}", dist.Normal(0.0, 1.0))
    scale = pyro.sample("scale", dist.LogNormal(0.0, 0.5))
    with pyro.plate("data", len(data), subsample_size=subsample_size) as idx:
        local = pyro.sample("local", dist.Normal(loc, scale))
        pyro.sample("obs", dist.Normal(local, 1.0), obs=data[idx])


def global_model(data: torch.Tensor = DATA, latents: int = 2) -> None:
    """Global latents only, for guides that need a fixed-size latent."""
    loc = 0.0
    for i in range(latents):
        loc = loc + pyro.sample(f"g{i}", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(data)):
        pyro.sample("obs", dist.Normal(loc, 1.0), obs=data)


def _sub_plates(data: torch.Tensor = DATA, latents: int = 2, subsample_size: int | None = None):
    return pyro.plate("data", len(data), subsample_size=subsample_size)


class Easy(EasyGuide):  # type: ignore[misc]
    def guide(
        self, data: torch.Tensor = DATA, latents: int = 2, subsample_size: int | None = None
    ) -> None:
        for i in range(latents):
            self.map_estimate(f"g{i}")
        self.map_estimate("scale")
        with self.plate("data", len(data), subsample_size=subsample_size):
            self.group(match="local").map_estimate()


class Regression(PyroModule):  # type: ignore[misc]
    """A PyroModule with a nested PyroModule, a PyroParam and a PyroSample."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = PyroModule[torch.nn.Linear](1, 1)
        self.linear.weight = PyroSample(dist.Normal(0.0, 1.0).expand([1, 1]).to_event(2))
        self.noise = PyroParam(torch.tensor(0.5), constraint=dist.constraints.positive)
        self.offset = PyroParam(torch.tensor(0.1))

    def forward(self, x: torch.Tensor = DATA) -> torch.Tensor:
        mean = self.linear(x.unsqueeze(-1)).squeeze(-1) + self.offset
        with pyro.plate("data", len(x)):
            return pyro.sample("y", dist.Normal(mean, self.noise), obs=x)  # type: ignore[no-any-return]


def _guide_list(model_fn: Callable[..., None]) -> ag.AutoGuideList:
    guide = ag.AutoGuideList(model_fn, create_plates=_sub_plates)
    guide.append(ag.AutoDiagonalNormal(poutine.block(model_fn, hide=["local"])))
    inner = ag.AutoGuideList(poutine.block(model_fn, expose=["local"]))
    inner.append(ag.AutoNormal(poutine.block(model_fn, expose=["local"])))
    guide.append(inner)
    return guide


# kind -> (model, guide factory, model kwargs)
KINDS: dict[str, tuple[Callable[..., Any], Callable[[Callable[..., Any]], Any], dict[str, Any]]] = {
    "AutoNormal": (model, ag.AutoNormal, {}),
    "AutoDelta": (model, ag.AutoDelta, {}),
    "AutoDiagonalNormal": (global_model, ag.AutoDiagonalNormal, {}),
    "AutoMultivariateNormal": (global_model, ag.AutoMultivariateNormal, {}),
    "AutoLowRankMultivariateNormal": (
        global_model,
        lambda m: ag.AutoLowRankMultivariateNormal(m, rank=1),
        {},
    ),
    "AutoLaplaceApproximation": (global_model, ag.AutoLaplaceApproximation, {}),
    "AutoIAFNormal": (global_model, lambda m: ag.AutoIAFNormal(m, hidden_dim=[4]), {}),
    "AutoStructured": (
        model,
        lambda m: ag.AutoStructured(
            m, conditionals={"g0": "normal", "g1": "delta", "scale": "normal", "local": "normal"}
        ),
        {},
    ),
    "AutoGuideList": (model, _guide_list, {"subsample_size": 5}),
    "AutoNormalMessenger": (model, ag.AutoNormalMessenger, {}),
    "AutoHierarchicalNormalMessenger": (model, ag.AutoHierarchicalNormalMessenger, {}),
    "AutoRegressiveMessenger": (model, ag.AutoRegressiveMessenger, {}),
    "EasyGuide": (model, Easy, {}),
    "PyroModule": (Regression, lambda m: m, {}),  # the model is the module
}


def build(
    kind: str, seed: int = 0, steps: int = 3, **overrides: Any
) -> tuple[Any, Any, dict[str, Any]]:
    """A freshly built and trained (model, guide, model kwargs); deterministic per seed.

    ``overrides`` change the model's arguments (data, latents, subsample_size).
    """
    model_fn, factory, kwargs = KINDS[kind]
    kwargs = {**kwargs, **overrides}
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    if kind == "PyroModule":
        module = Regression()
        guide = ag.AutoNormal(module)
        train(module, guide, kwargs, steps)
        return module, module, kwargs
    guide = factory(model_fn)
    train(model_fn, guide, kwargs, steps)
    return model_fn, guide, kwargs


def train(model_fn: Any, guide: Any, kwargs: dict[str, Any], steps: int) -> list[float]:
    svi = SVI(model_fn, guide, Adam({"lr": 0.01}), Trace_ELBO())
    return [svi.step(**kwargs) for _ in range(steps)]


def outputs(kind: str, model_fn: Any, guide: Any, kwargs: dict[str, Any]) -> Any:
    """What the guide computes: one traced run, then losses of a few SVI steps."""
    if kind == "PyroModule":
        trace = poutine.trace(guide).get_trace()
        values = {n: s["value"] for n, s in trace.nodes.items() if s["type"] == "sample"}
        return values, {n: p.detach().clone() for n, p in guide.named_parameters()}
    trace = poutine.trace(guide).get_trace(**kwargs)
    values = {n: s["value"] for n, s in trace.nodes.items() if s["type"] in ("sample", "param")}
    return values, train(model_fn, guide, kwargs, 2)


def sample_in_worker(guide: Any, kwargs: dict[str, Any], seed: int) -> dict[str, torch.Tensor]:
    """Run in a spawned worker: the guide arrives pickled; its samples from ``seed``."""
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    trace = poutine.trace(guide).get_trace(**kwargs)
    return {n: s["value"].detach() for n, s in trace.nodes.items() if s["type"] == "sample"}
