"""The reproduction: train the EasyGuide of Pyro's EasyGuide tutorial, save it with
``torch.save``, load it, and train both the original and the loaded copy again.

``python -m pyro_pickle_fix.scenario`` runs it and prints the outcome as JSON;
``python -m pyro_pickle_fix check`` runs that twice, without and with the fix.
Whether the fix is on is decided by ``PYRO_PICKLE_FIX`` when this module's
package is imported, as for any user.
"""

from __future__ import annotations

import io
import json
import sys
import traceback
from collections.abc import Callable
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.contrib.easyguide import EasyGuide
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide.initialization import init_to_median
from pyro.optim import Adam  # type: ignore[attr-defined]

TIME_STEPS = 8
FULL_SIZE = 50
BATCH_SIZE = 20


def model(batch: torch.Tensor, subsample: torch.Tensor, full_size: int) -> None:
    """A latent random walk per data point, observed through Bernoulli logits."""
    drift = pyro.sample("drift", dist.LogNormal(-1, 0.5))
    with pyro.plate("data", full_size, subsample=subsample):
        z: Any = 0.0
        for t in range(len(batch)):
            z = pyro.sample(f"state_{t}", dist.Normal(z, drift))
            pyro.sample(f"obs_{t}", dist.Bernoulli(logits=z), obs=batch[t])


class PickleGuide(EasyGuide):
    """MAP estimates of the drift and of every state, grouped."""

    def __init__(self, model: Callable[..., Any]) -> None:
        super().__init__(model)
        self.init = init_to_median  # type: ignore[method-assign]

    def guide(self, batch: torch.Tensor, subsample: torch.Tensor, full_size: int) -> None:
        self.map_estimate("drift")
        with self.plate("data", full_size, subsample=subsample):
            self.group(match="state_[0-9]*").map_estimate()


def make_data(seed: int = 0) -> torch.Tensor:
    """Binary observations, time steps x data points."""
    generator = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.full((TIME_STEPS, FULL_SIZE), 0.5), generator=generator)


def train(guide: Any, data: torch.Tensor, epochs: int = 2) -> list[float]:
    """SVI over the data in batches of ``BATCH_SIZE``; returns the losses."""
    svi = SVI(model, guide, Adam({"lr": 0.02}), Trace_ELBO())
    full_size = data.size(-1)
    losses = []
    for _ in range(epochs):
        for begin in range(0, full_size, BATCH_SIZE):
            subsample = torch.arange(begin, min(begin + BATCH_SIZE, full_size))
            losses.append(svi.step(data[:, subsample], subsample, full_size))
    return losses


def save_and_load(obj: Any) -> Any:
    """``torch.save`` to memory and ``torch.load`` back, as a user checkpoints."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


def live_graph(guide: Any) -> list[tuple[int, dict[str, int]]]:
    """``__dict__`` objects and value identities of the guide, its groups and its
    parameters (pyro keeps a weakref in each parameter's ``__dict__``)."""
    objects = [guide, *guide.groups.values(), *guide.parameters()]
    return [(id(o.__dict__), {k: id(v) for k, v in o.__dict__.items()}) for o in objects]


def _attempt(action: Callable[[], object]) -> dict[str, Any]:
    try:
        action()
    except Exception as error:
        line = traceback.format_exception_only(type(error), error)[-1].strip()
        return {"ok": False, "error": line}
    return {"ok": True, "error": None}


def reproduce(seed: int = 0) -> dict[str, Any]:
    """Train, save, load, train both again; report what happened to each."""
    import wrapt

    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    data = make_data(seed)
    guide = PickleGuide(model)
    train(guide, data)
    before = live_graph(guide)
    loaded = save_and_load(guide)
    unchanged = live_graph(guide) == before
    original = _attempt(lambda: train(guide, data, epochs=1))
    loaded_outcome = _attempt(lambda: train(loaded, data, epochs=1))
    fix = sys.modules.get("pyro_pickle_fix")
    return {
        "versions": {
            "python": ".".join(map(str, sys.version_info[:3])),
            "torch": torch.__version__,
            "pyro-ppl": pyro.__version__,
            "wrapt": getattr(wrapt, "__version__", "?"),
        },
        "fix_active": bool(fix and fix.is_patched()),
        "original": dict(original, unchanged=unchanged),
        "loaded": loaded_outcome,
    }


if __name__ == "__main__":
    print(json.dumps(reproduce()))
