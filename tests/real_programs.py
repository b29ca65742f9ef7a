"""Real Pyro programs that ship in pyro-ppl (pyro.contrib), trained a few steps on
tiny synthetic data, optionally saving every object they expose after every step
through every serialization path.  Run by tests/test_real_programs.py, one program
and one mode per fresh interpreter::

    import real_programs; real_programs.main(PROGRAM, SAVE)

prints one JSON line: the losses, the final parameters and outputs (as exact bytes),
what each save raised, and whether the object loaded from the last ``torch.save``
trains one more step.  ``PYRO_PICKLE_FIX=0`` in the environment makes it stock.
"""

from __future__ import annotations

import copy
import io
import json
import pickle
import sys
from collections.abc import Callable
from functools import partial
from typing import Any

import cloudpickle
import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.contrib.easyguide import EasyGuide
from pyro.contrib.forecast import Forecaster, ForecastingModel
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from pyro.infer.reparam import LocScaleReparam
from pyro.nn import PyroSample
from pyro.optim import Adam

import pyro_pickle_fix  # noqa: F401  (PYRO_PICKLE_FIX=0 leaves the interpreter stock)
from pyro_pickle_fix.diagnostics import audit
from pyro_pickle_fix.diagnostics.snapshot import Snapshot

SEED = 0
STEPS = 4


def _torch_save(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


#: path -> what serializes (or copies) one object
PATHS: dict[str, Callable[[Any], Any]] = {
    "torch.save": _torch_save,
    "pickle": pickle.dumps,
    "cloudpickle": cloudpickle.dumps,
    "deepcopy": copy.deepcopy,
    "copy": copy.copy,
}


def error_line(error: BaseException) -> str:
    return audit.error_line(error)[:300]


class Saver:
    """Called after every training step with the objects the program exposes."""

    def __init__(self, save: bool) -> None:
        self.save = save
        self.step = 0
        #: "object path" -> "step N: Type: message", the first time it raised
        self.errors: dict[str, str] = {}
        #: "object path" -> "step N: what it changed in the live objects", the first time
        self.changes: dict[str, str] = {}
        #: object -> the bytes of its last torch.save
        self.last: dict[str, bytes] = {}
        #: set by a program whose object exists before it trains
        self.program: Any = None

    def __call__(self, targets: dict[str, Any]) -> None:
        """After a step."""
        self.step += 1
        self.save_all(targets)

    def save_all(self, targets: dict[str, Any]) -> None:
        if not self.save:
            return
        roots = {**targets, "store": pyro.get_param_store()}
        for name, obj in targets.items():
            for path, serialize in PATHS.items():
                self._save(f"{name} {path}", partial(serialize, obj), roots)
        self._save(
            "param-store get_state",
            lambda: _torch_save(pyro.get_param_store().get_state()),
            roots,
        )

    def _save(self, key: str, save: Callable[[], Any], roots: dict[str, Any]) -> None:
        before = Snapshot(**roots)
        try:
            out = save()
        except Exception as error:
            self.errors.setdefault(key, f"step {self.step}: {error_line(error)}")
        else:
            if key.endswith(" torch.save"):
                self.last[key.split()[0]] = out
        changed = before.diff(Snapshot(**roots))
        if changed and key not in self.changes:
            more = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
            self.changes[key] = f"step {self.step}: {changed[0]}{more}"


SAVER = Saver(False)
_svi_step = SVI.step


def _step_and_save(self: SVI, *args: Any, **kwargs: Any) -> Any:
    """SVI.step, then the saves: of the object whose method called it (a
    Forecaster, a CompartmentalModel, a CEVAE), or the program's, and of SVI's
    model and guide."""
    loss = _svi_step(self, *args, **kwargs)
    caller = sys._getframe(1).f_locals.get("self")
    program = SAVER.program if SAVER.program is not None else caller
    targets = {"model": self.model, "guide": self.guide}
    if program is not None and not isinstance(program, SVI):
        targets = {"program": program, **targets}
    SAVER(targets)
    return loss


def load(name: str) -> Any:
    """The object as the last torch.save wrote it."""
    return torch.load(io.BytesIO(SAVER.last[name]), weights_only=False)


def exact(value: Any) -> Any:
    """Tensors (nested in dicts, lists) as dtype, shape and their bytes in hex."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().contiguous()
        return [str(value.dtype), list(value.shape), value.numpy().tobytes().hex()]
    if isinstance(value, dict):
        return {str(k): exact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [exact(v) for v in value]
    if isinstance(value, float):
        return value.hex()
    return value


# ---------------------------------------------------------------------------
# pyro.contrib.forecast: Forecaster trains in its constructor (DCTAdam, AutoNormal).


class Drift(ForecastingModel):  # type: ignore[misc]
    """Forecasting tutorial I's models: a bias, a regression on the covariates and a
    drift, with LocScaleReparam on the drift (the AutoNormal's prototype trace then
    holds non-leaf tensors, which stock copy.deepcopy refuses)."""

    def model(self, zero_data: torch.Tensor, covariates: torch.Tensor) -> None:
        data_dim = zero_data.size(-1)
        feature_dim = covariates.size(-1)
        bias = pyro.sample("bias", dist.Normal(0.0, 10.0).expand([data_dim]).to_event(1))
        weight = pyro.sample("weight", dist.Normal(0.0, 0.1).expand([feature_dim]).to_event(1))
        drift_scale = pyro.sample("drift_scale", dist.LogNormal(-2.0, 1.0).expand([1]).to_event(1))
        with self.time_plate, poutine.reparam(config={"drift": LocScaleReparam()}):
            drift = pyro.sample("drift", dist.Normal(zero_data, drift_scale).to_event(1))
        prediction = drift.cumsum(-2) + bias + (weight * covariates).sum(-1, keepdim=True)
        noise_scale = pyro.sample("noise_scale", dist.LogNormal(-1.0, 1.0).expand([1]).to_event(1))
        self.predict(dist.Normal(0.0, noise_scale), prediction)


def _series() -> tuple[torch.Tensor, torch.Tensor]:
    data = (0.3 * torch.randn(12, 1)).cumsum(0)
    covariates = torch.linspace(0.0, 1.0, 12).unsqueeze(-1)
    return data, covariates


def forecast() -> dict[str, Any]:
    data, covariates = _series()
    train = (data[:8], covariates[:8])
    forecaster = Forecaster(Drift(), *train, num_steps=STEPS, learning_rate=0.1, log_every=0)
    # The last step's saves were of a Forecaster still in its constructor.
    SAVER.save_all({"program": forecaster, "model": forecaster.model, "guide": forecaster.guide})
    out: dict[str, Any] = {"losses": forecaster.losses}
    out["outputs"] = {"forecast": forecaster(data[:8], covariates, num_samples=3)}

    def again() -> None:
        loaded = load("program")
        svi = SVI(loaded.model, loaded.guide, Adam({"lr": 0.01}), Trace_ELBO())
        svi.step(*train)
        loaded(data[:8], covariates, num_samples=2)

    out["again"] = again
    return out


# ---------------------------------------------------------------------------
# pyro.contrib.epidemiology: CompartmentalModel.fit_svi (Haar reparam, AutoNormal).


def sir() -> dict[str, Any]:
    from pyro.contrib.epidemiology.models import SimpleSIRModel

    data = torch.tensor([1.0, 1.0, 2.0, 2.0, 3.0, 2.0, 2.0, 1.0, 1.0, 0.0])
    model = SimpleSIRModel(population=100, recovery_time=3.0, data=data)
    losses = model.fit_svi(
        num_steps=STEPS - 1, num_samples=3, heuristic_num_particles=64, log_every=100
    )
    out: dict[str, Any] = {"losses": losses, "outputs": {"samples": model.samples}}

    def again() -> None:
        loaded_model, loaded_guide = load("model"), load("guide")
        SVI(loaded_model, loaded_guide, Adam({"lr": 0.01}), Trace_ELBO()).step()
        load("program").fit_svi(num_steps=1, num_samples=2, heuristic_num_particles=16)

    out["again"] = again
    return out


# ---------------------------------------------------------------------------
# pyro.contrib.cevae: CEVAE.fit (PyroModule model and guide of neural networks).


def cevae() -> dict[str, Any]:
    from pyro.contrib.cevae import CEVAE

    x = torch.randn(16, 3)
    t = torch.bernoulli(torch.sigmoid(x[:, 0]))
    y = x[:, 1] + t + 0.1 * torch.randn(16)
    program = CEVAE(feature_dim=3, outcome_dist="normal", latent_dim=2, hidden_dim=8, num_layers=2)
    program.num_samples = 3
    losses = program.fit(x, t, y, num_epochs=1, batch_size=4, learning_rate=1e-2, log_every=0)
    out: dict[str, Any] = {"losses": losses, "outputs": {"ite": program.ite(x)}}
    out["modules"] = {"program": program}

    def again() -> None:
        loaded = load("program")
        loaded.fit(x, t, y, num_epochs=1, batch_size=16, log_every=0)
        loaded.ite(x[:2])

    out["again"] = again
    return out


# ---------------------------------------------------------------------------
# pyro.contrib.gp: a VariationalSparseGP with gp's own autoguide on a kernel prior,
# trained by gp.util.train; a SparseGPRegression with pyro's AutoNormal, by SVI.


def _gp_data() -> tuple[torch.Tensor, torch.Tensor]:
    X = torch.linspace(0.0, 1.0, 12)
    return X, torch.sin(6.0 * X) + 0.1 * torch.randn(12)


def _kernel() -> Any:
    import pyro.contrib.gp as gp

    kernel = gp.kernels.RBF(input_dim=1)
    kernel.lengthscale = PyroSample(dist.LogNormal(0.0, 1.0))
    kernel.variance = PyroSample(dist.LogNormal(0.0, 1.0))
    return kernel


def vsgp() -> dict[str, Any]:
    import pyro.contrib.gp as gp

    X, y = _gp_data()
    program = gp.models.VariationalSparseGP(
        X, y, _kernel(), Xu=X[::3].clone(), likelihood=gp.likelihoods.Gaussian()
    )
    program.kernel.autoguide("lengthscale", dist.Normal)  # variance keeps the Delta
    optimizer = torch.optim.Adam(program.parameters(), lr=0.05)
    losses: list[float] = []
    for _ in range(STEPS):
        losses += gp.util.train(program, optimizer, num_steps=1)
        SAVER({"program": program, "model": program.model, "guide": program.guide})
    with torch.no_grad():
        mean, var = program(torch.linspace(0.0, 1.2, 5))
    out: dict[str, Any] = {"losses": losses, "outputs": {"mean": mean, "var": var}}
    out["modules"] = {"program": program}

    def again() -> None:
        loaded = load("program")
        gp.util.train(loaded, num_steps=1)
        loaded(torch.linspace(0.0, 1.2, 5))

    out["again"] = again
    return out


def sgpr_autonormal() -> dict[str, Any]:
    import pyro.contrib.gp as gp

    X, y = _gp_data()
    program = gp.models.SparseGPRegression(
        X, y, _kernel(), Xu=X[::3].clone(), noise=torch.tensor(0.1)
    )
    guide = AutoNormal(program.model)
    SAVER.program = program
    svi = SVI(program.model, guide, Adam({"lr": 0.05}), Trace_ELBO())
    losses = [svi.step() for _ in range(STEPS)]
    SAVER.program = None
    out: dict[str, Any] = {"losses": losses, "outputs": {"guide": guide.median()}}
    out["modules"] = {"program": program}

    def again() -> None:
        loaded_program, loaded_guide = load("program"), load("guide")
        SVI(loaded_program.model, loaded_guide, Adam({"lr": 0.01}), Trace_ELBO()).step()

    out["again"] = again
    return out


# ---------------------------------------------------------------------------
# pyro.contrib.timeseries: IndependentMaternGP fit by maximum likelihood (torch Adam).


def matern() -> dict[str, Any]:
    from pyro.contrib.timeseries import IndependentMaternGP

    data = (0.3 * torch.randn(16, 2)).cumsum(0)
    program = IndependentMaternGP(nu=1.5, obs_dim=2, length_scale_init=1.5 * torch.ones(2))
    optimizer = torch.optim.Adam(program.parameters(), lr=0.05)
    losses = []
    for _ in range(STEPS):
        optimizer.zero_grad()
        loss = -program.log_prob(data).sum()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        SAVER({"program": program})
    with torch.no_grad():
        forecast = program.forecast(data, torch.tensor([1.0, 2.0]))
    out: dict[str, Any] = {"losses": losses, "outputs": {"forecast": forecast.loc}}
    out["modules"] = {"program": program}

    def again() -> None:
        loaded = load("program")
        optimizer = torch.optim.Adam(loaded.parameters(), lr=0.05)
        (-loaded.log_prob(data).sum()).backward()
        optimizer.step()

    out["again"] = again
    return out


# ---------------------------------------------------------------------------
# pyro.contrib.easyguide: an EasyGuide with a joint Normal over the globals (a Group)
# and MAP estimates of the locals in a subsampled plate.


def easy_model(data: torch.Tensor, subsample_size: int | None = None) -> None:
    loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
    scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
    with pyro.plate("items", len(data), subsample_size=subsample_size) as idx:
        z = pyro.sample("z", dist.Normal(loc, scale))
        pyro.sample("obs", dist.Normal(z, 0.5), obs=data[idx])


class JointGuide(EasyGuide):  # type: ignore[misc]
    def guide(self, data: torch.Tensor, subsample_size: int | None = None) -> None:
        group = self.group(match="loc|scale")
        loc = pyro.param("joint_loc", lambda: torch.zeros(group.event_shape))
        scale = pyro.param(
            "joint_scale",
            lambda: 0.1 * torch.ones(group.event_shape),
            constraint=dist.constraints.positive,
        )
        group.sample("joint", dist.Normal(loc, scale).to_event(1))
        with self.plate("items", len(data), subsample_size=subsample_size):
            self.group(match="z").map_estimate()


def easyguide() -> dict[str, Any]:
    data = torch.randn(10) + 1.0
    guide = JointGuide(easy_model)
    svi = SVI(easy_model, guide, Adam({"lr": 0.05}), Trace_ELBO())
    losses = [svi.step(data, subsample_size=4) for _ in range(STEPS)]
    out: dict[str, Any] = {"losses": losses, "outputs": {}}

    def again() -> None:
        loaded = load("guide")
        SVI(easy_model, loaded, Adam({"lr": 0.01}), Trace_ELBO()).step(data, subsample_size=4)

    out["again"] = again
    return out


PROGRAMS: dict[str, Callable[[], dict[str, Any]]] = {
    "Forecaster+LocScaleReparam": forecast,
    "SimpleSIRModel.fit_svi": sir,
    "CEVAE.fit": cevae,
    "VariationalSparseGP+gp.autoguide": vsgp,
    "SparseGPRegression+AutoNormal": sgpr_autonormal,
    "IndependentMaternGP": matern,
    "EasyGuide": easyguide,
}


def main(name: str, save: bool) -> None:
    SVI.step = _step_and_save  # type: ignore[method-assign]
    torch.set_num_threads(1)
    pyro.clear_param_store()
    pyro.set_rng_seed(SEED)
    SAVER.save = save
    report: dict[str, Any] = {"train_error": None, "again": None, "losses": None}
    try:
        out = PROGRAMS[name]()
    except Exception as error:
        report["train_error"] = f"after step {SAVER.step}: {error_line(error)}"
    else:
        params = dict(pyro.get_param_store().items())
        for prefix, module in out.get("modules", {}).items():
            params.update({f"{prefix}:{k}": v for k, v in module.state_dict().items()})
        report.update(
            losses=exact([float(loss) for loss in out["losses"]]),
            params=exact(params),
            outputs=exact(out["outputs"]),
        )
        report["steps"] = SAVER.step
        if save:
            SAVER.save = False  # the loaded object's step is not saved
            pyro.clear_param_store()  # as a fresh process that loads the file
            try:
                out["again"]()
                report["again"] = "trains"
            except Exception as error:
                report["again"] = f"fails: {error_line(error)}"
    report.setdefault("steps", SAVER.step)
    report["errors"] = SAVER.errors
    report["changes"] = SAVER.changes
    print(json.dumps(report))
