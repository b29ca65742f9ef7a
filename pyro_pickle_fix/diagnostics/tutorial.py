"""The reproduction: train the EasyGuide of Pyro's EasyGuide tutorial, save it with
``torch.save``, load it, and train both the original and the loaded copy again.

``python -m pyro_pickle_fix.diagnostics.tutorial`` runs it and prints the outcome as JSON;
``python -m pyro_pickle_fix check`` runs that twice, without and with the fix.
Whether the fix is on is decided by ``PYRO_PICKLE_FIX`` when this module's
package is imported, as for any user.
"""

from __future__ import annotations

import io
import json
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


def trained_guide(seed: int = 0) -> tuple[PickleGuide, Callable[[Any], object]]:
    """A trained tutorial guide, and one more epoch of training for any copy of it."""
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    data = make_data(seed)
    guide = PickleGuide(model)
    train(guide, data)
    return guide, lambda trained: train(trained, data, epochs=1)


def autoguide_after_save(seed: int = 0) -> dict[str, Any]:
    """An ``AutoNormal`` of the same model, saved with ``torch.save``: what changed
    in it, and whether ``guide.model`` (what ``laplace_approximation()``, nested
    guides and user code read) still answers."""
    from pyro.infer.autoguide import AutoNormal

    from .audit import error_line
    from .snapshot import snapshot

    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    data = make_data(seed)
    guide = AutoNormal(model)
    guide(data[:, :BATCH_SIZE], torch.arange(BATCH_SIZE), FULL_SIZE)
    before = snapshot(guide)
    torch.save(guide, io.BytesIO())
    changes = before.diff(snapshot(guide))
    try:
        guide.model  # noqa: B018  (the read is the test)
        error = None
    except Exception as raised:
        error = error_line(raised)
    return {"changes": changes, "error": error}


def _load_outcome(load: Callable[[str], object], path: str) -> str:
    """``"loads"``, or ``"refused (ErrorType)"``, of one load of ``path``."""
    from .audit import error_line

    try:
        load(path)
    except Exception as error:
        return f"refused ({error_line(error).partition(':')[0].rpartition('.')[2]})"
    return "loads"


def loads_here() -> dict[str, dict[str, str]]:
    """What ``ParamStoreDict.load`` and ``PyroOptim.load`` do here with a file pyro
    wrote (``genuine``) and with one that names ``datetime.date`` (``foreign``): a
    load that builds the date trusts the file, and would run what a crafted file
    names."""
    import datetime
    import os
    import tempfile

    from pyro.optim import Adam  # type: ignore[attr-defined]

    date = datetime.date(2000, 1, 1)

    def probe_model() -> None:
        pyro.sample("z", dist.Normal(0.0, 1.0))

    def probe_guide() -> None:
        scale = pyro.param("scale", torch.ones(()), constraint=dist.constraints.positive)
        pyro.sample("z", dist.Normal(0.0, scale))

    pyro.clear_param_store()
    optim = Adam({"lr": 0.01})
    SVI(probe_model, probe_guide, optim, Trace_ELBO()).step()
    found: dict[str, dict[str, str]] = {}
    with tempfile.TemporaryDirectory() as directory:
        genuine, foreign = (os.path.join(directory, name) for name in ("g.pt", "f.pt"))
        # What pyro writes, and the same with a date where a constraint or a state goes.
        for name, save, load, crafted in (
            (
                "param store",
                pyro.get_param_store().save,
                pyro.get_param_store().load,
                {"params": {"scale": torch.ones(())}, "constraints": {"scale": date}},
            ),
            ("optimizer", optim.save, Adam({"lr": 0.01}).load, {"scale": date}),
        ):
            save(genuine)
            torch.save(crafted, foreign)
            found[name] = {
                "genuine": _load_outcome(load, genuine),
                "foreign": _load_outcome(load, foreign),
            }
    pyro.clear_param_store()
    return found


def reproduce(seed: int = 0) -> dict[str, Any]:
    """Train, save with ``torch.save``, load, train both again: the audit of the
    tutorial guide along that one path, in the form ``check`` reports; then the
    same save of an ``AutoNormal``, and the two pyro loads."""
    from .audit import audit

    report = audit(lambda: trained_guide(seed), paths=["torch.save"], target="tutorial EasyGuide")
    (row,) = report.rows
    return {
        "versions": report.versions,
        "fix_active": report.fix_active,
        "original": {
            "ok": row.live_error is None,
            "error": row.live_error,
            "unchanged": not row.changes,
            "changes": row.changes,
        },
        "loaded": {
            "ok": row.saved is None and row.copy_error is None,
            "error": row.saved or row.copy_error,
        },
        "autoguide": autoguide_after_save(seed),
        "loads": loads_here(),
    }


if __name__ == "__main__":
    print(json.dumps(reproduce()))
