"""``pyro-pickle-fix verify FILE...``: a file checked before it is loaded, through
the loads' own checks, and nothing changed.  The oracle for what a file holds is
pyro itself: the param store and the optimizer that wrote it."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from pyro.optim import Adam, StepLR

import pyro_pickle_fix
from pyro_pickle_fix.diagnostics.verify import verify_file


def model() -> None:
    scale = pyro.param("scale", torch.ones(3), constraint=dist.constraints.positive)
    pyro.sample("z", dist.Normal(torch.zeros(3), scale).to_event(1))


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Files as pyro writes them, and the objects that wrote them."""
    directory = tmp_path_factory.mktemp("verify")
    pyro.clear_param_store()
    guide = AutoNormal(model)
    adam = Adam({"lr": 0.01})
    SVI(model, guide, adam, Trace_ELBO()).step()
    scheduled = StepLR({"optimizer": torch.optim.SGD, "optim_args": {"lr": 0.1}, "step_size": 2})
    SVI(model, guide, scheduled, Trace_ELBO()).step()
    scheduled.step()
    paths = {name: directory / f"{name}.pt" for name in ("store", "adam", "steplr", "guide", "sd")}
    pyro.get_param_store().save(paths["store"])
    adam.save(paths["adam"])
    scheduled.save(paths["steplr"])
    torch.save(guide, paths["guide"])
    torch.save(guide.state_dict(), paths["sd"])
    paths["truncated"] = directory / "truncated.pt"
    paths["truncated"].write_bytes(paths["store"].read_bytes()[:700])
    store = pyro.get_param_store()
    WROTE[:] = [
        {
            "name": name,
            "shape": list(store[name].shape),
            "dtype": str(store[name].dtype).removeprefix("torch."),
            "constraint": repr(store._constraints[name]),
        }
        for name in store
    ]
    return paths


#: What the param store held when it wrote the files (the suite clears it per test).
WROTE: list[dict[str, object]] = []


def cli(*args: object, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYRO_PICKLE_FIX")}
    return subprocess.run(
        [sys.executable, "-m", "pyro_pickle_fix", "verify", *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=cwd,
    )


def test_a_param_store_file_is_described_as_pyro_holds_it(files):
    done = cli(files["store"], "--json")
    assert done.returncode == 0, done.stderr
    (report,) = json.loads(done.stdout)["files"]
    assert report["verdict"] == "loads" and report["kind"] == "a param-store file"
    assert sorted(report["parameters"], key=str) == sorted(WROTE, key=str)
    assert "GreaterThan(lower_bound=0.0)" in {p["constraint"] for p in WROTE}
    text = cli(files["store"]).stdout
    assert text.splitlines()[0].endswith(
        "a param-store file: loads "
        "(pyro.get_param_store().load(path) accepts it; "
        "nothing was changed)"
    )


def test_an_optimizer_file_lists_each_parameter_s_state_and_scheduler(files):
    adam, steplr = (verify_file(str(files[name])) for name in ("adam", "steplr"))
    assert adam.code == steplr.code == 0 and adam.kind == steplr.kind == "an optimizer file"
    # What Adam keeps per parameter, as torch's own optimizer holds it.
    probe = torch.nn.Parameter(torch.ones(1))
    torch_adam = torch.optim.Adam([probe])
    probe.grad = torch.ones(1)
    torch_adam.step()
    kinds = list(torch_adam.state[probe])
    assert {entry["parameter"] for entry in adam.optimizer} == {p["name"] for p in WROTE}
    assert all(entry["state"] == kinds and entry["scheduler"] is None for entry in adam.optimizer)
    assert all(entry["settings"]["lr"] == 0.01 for entry in adam.optimizer)
    assert all(entry["scheduler"].startswith("last_epoch=") for entry in steplr.optimizer)
    assert "last_epoch=" in str(steplr)


def test_verify_changes_nothing(files):
    store = pyro.get_param_store()
    pyro.param("live", torch.ones(2), constraint=dist.constraints.positive)
    before = dict(store._params)  # the unconstrained tensors themselves
    constraints = dict(store._constraints)
    for path in files.values():
        verify_file(str(path))
    assert list(store.keys()) == list(before) == ["live"]
    assert all(store._params[name] is tensor for name, tensor in before.items())
    assert store._constraints == constraints


def test_a_whole_guide_names_what_it_would_import_and_nothing_runs(files, tmp_path):
    done = cli(files["guide"])
    assert done.returncode == 1, done.stderr
    assert done.stdout.startswith(f"{files['guide']}: refused\n")
    assert "only torch.load(path, weights_only=False) loads it" in done.stdout
    assert "    pyro.infer.autoguide.guides.AutoNormal\n" in done.stdout
    assert "so loading it runs code from " in done.stdout
    # A crafted file whose load would run a command: verify names it and runs nothing.
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    crafted = tmp_path / "crafted.pt"
    torch.save({"params": {"x": torch.ones(1)}, "constraints": {"x": Payload()}}, crafted)
    report = verify_file(str(crafted))
    assert report.code == 1 and report.imports == [f"{os.system.__module__}.system"]
    assert report.reasons[0].startswith("as a param-store file: it needs the global")
    assert not marker.exists()


def test_a_crafted_file_with_only_tensors_is_refused_with_the_load_s_reason(tmp_path):
    # A few KB that stock's optimizer load makes a tensor of 10**8 elements.
    path = tmp_path / "stride0_optim.pt"
    repeated = torch.zeros(1, dtype=torch.float64).expand(10**8)
    state = {0: {"exp_avg": repeated}}
    torch.save({"AutoNormal.locs.g0": {"state": state, "param_groups": [{"params": [0]}]}}, path)
    report = verify_file(str(path))
    assert report.code == 1 and report.kind is None and report.imports == []
    assert any("times the file's" in reason for reason in report.reasons), report.reasons


def test_a_file_of_another_kind_is_refused_and_says_how_to_load_it(files):
    report = verify_file(str(files["sd"]))
    assert report.code == 1 and report.imports == []
    assert report.reasons[-1].endswith("load it with torch.load(path, weights_only=True)")


def test_a_damaged_or_missing_file_cannot_be_read(files, tmp_path):
    done = cli(files["truncated"], tmp_path / "missing.pt", "--json")
    assert done.returncode == 2
    truncated, missing = json.loads(done.stdout)["files"]
    assert truncated["verdict"] == missing["verdict"] == "cannot read"
    assert "damaged or truncated" in truncated["reasons"][0]
    assert missing["reasons"] == ["cannot open it: No such file or directory"]


def test_the_exit_is_the_worst_of_the_files(files):
    assert cli(files["store"], files["adam"]).returncode == 0
    assert cli(files["store"], files["guide"]).returncode == 1
    assert cli(files["guide"], files["truncated"]).returncode == 2


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_the_globals_are_read_from_the_opcodes_of_every_protocol(protocol):
    import collections
    import datetime

    from pyro_pickle_fix.diagnostics.verify import _globals

    # Two dates: the second names its class through the memo (protocol 4's STACK_GLOBAL).
    data = pickle.dumps(
        [collections.OrderedDict(), datetime.date(2000, 1, 1), datetime.date(2000, 1, 2)],
        protocol,
    )
    found = set(_globals(data))
    assert found - {"_codecs.encode"} == {"collections.OrderedDict", "datetime.date"}


def test_a_file_in_torch_s_legacy_format_is_refused_as_the_loads_refuse_it(tmp_path):
    from pyro_pickle_fix.diagnostics.verify import LEGACY_MAGIC

    path = tmp_path / "legacy.pt"
    torch.save({"x": torch.ones(2)}, path, _use_new_zipfile_serialization=False)
    assert path.read_bytes().startswith(LEGACY_MAGIC)
    report = verify_file(str(path))
    assert report.code == 1 and report.imports == []
    assert report.reasons[-1].startswith("it is in torch's legacy format")
    # Damaged after its first bytes, it is still that format: refused, not unreadable.
    path.write_bytes(path.read_bytes()[:40])
    assert verify_file(str(path)).code == 1


def test_a_bit_flipped_pickle_gets_the_loads_verdict_and_reason(files, tmp_path):
    # One byte of the pickle changed (its CRC no longer matches): the loads refuse
    # it for the global it now names, where verify read it with zipfile, which
    # checks the CRC, and said "cannot read" (exit 2).
    from pyro_pickle_fix.diagnostics.verify import STORE, _why

    raw = files["store"].read_bytes()
    assert raw.count(b"OrderedDict") >= 1
    path = tmp_path / "flipped.pt"
    path.write_bytes(raw.replace(b"OrderedDict", b"OrderedDicu", 1))
    pyro.clear_param_store()
    with pytest.raises(pyro_pickle_fix.UntrustedGlobalError) as refused:
        pyro.get_param_store().load(path)
    report = verify_file(str(path))
    assert report.verdict == "refused" and report.code == 1, report.reasons
    assert f"as {STORE}: {_why(refused.value, STORE)}" in report.reasons, report.reasons
    assert cli(path).returncode == 1
