"""Ray and Dask ship live guides: on the driver with the fix imported, and in
workers with worker activation (issue: distributed engines).

Real engines: a local Ray instance and a Dask LocalCluster of worker processes,
bounded in time and shut down after.  Skipped where ray or distributed is not
installed; the ``engines`` nox session installs both.  multiprocessing pools,
which need neither, are in test_pools.py and run in every cell.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from engine_work import Trainer, sample_in_worker
from guides import build, train
from support import assert_same_tensors, run_json, snapshot

import pyro_pickle_fix

ray = pytest.importorskip("ray")
distributed = pytest.importorskip("distributed")

TESTS = Path(__file__).parent
KINDS = ["AutoNormal", "AutoGuideList", "EasyGuide"]
TIMEOUT = 120  # seconds, for any one engine call
SEED = 7


@pytest.fixture(scope="module")
def ray_instance():
    path = os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        # Worker activation, as the README gives it (a job-level setting in Ray).
        runtime_env={
            "env_vars": {"PYTHONPATH": path},
            "worker_process_setup_hook": "pyro_pickle_fix.patch",
        },
    )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def dask_client():
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster, timeout=TIMEOUT) as client,
    ):
        yield client


@pytest.fixture
def dask_errors():
    """Records at ERROR and above on the distributed loggers during a test."""
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Collect(level=logging.ERROR)
    logger = logging.getLogger("distributed")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


def _ray_put(guide, kwargs):
    task = ray.remote(sample_in_worker)
    return ray.get(task.remote(ray.put(guide), kwargs, SEED), timeout=TIMEOUT)


def _ray_arg(guide, kwargs):
    return ray.get(ray.remote(sample_in_worker).remote(guide, kwargs, SEED), timeout=TIMEOUT)


def _ray_actor(guide, kwargs):
    class Sampler:
        def sample(self, guide, kwargs):
            return sample_in_worker(guide, kwargs, SEED)

    actor = ray.remote(Sampler).remote()
    try:
        return ray.get(actor.sample.remote(guide, kwargs), timeout=TIMEOUT)
    finally:
        ray.kill(actor)


RAY = {"ray.put+task": _ray_put, "ray task argument": _ray_arg, "ray actor argument": _ray_actor}


def _check_driver_side(kind, ship):
    model_fn, guide, kwargs = build(kind)
    before = snapshot(guide)
    remote = ship(guide, kwargs)
    assert snapshot(guide) == before, before.diff(snapshot(guide))
    _, twin, _ = build(kind)  # same seed, never shipped
    assert_same_tensors(remote, sample_in_worker(twin, kwargs, SEED))
    train(model_fn, guide, kwargs, 2)  # the driver keeps training


@pytest.mark.parametrize("path", sorted(RAY))
@pytest.mark.parametrize("kind", KINDS)
def test_ray_leaves_the_drivers_guide_intact(ray_instance, kind, path):
    _check_driver_side(kind, RAY[path])


@pytest.mark.parametrize("how", ["submit", "scatter"])
@pytest.mark.parametrize("kind", KINDS)
def test_dask_leaves_the_drivers_guide_intact_and_logs_no_error(
    dask_client, dask_errors, kind, how
):
    def ship(guide, kwargs):
        if how == "scatter":
            guide = dask_client.scatter(guide)
        future = dask_client.submit(sample_in_worker, guide, kwargs, SEED, pure=False)
        return future.result(timeout=TIMEOUT)

    _check_driver_side(kind, ship)
    assert [record.getMessage() for record in dask_errors] == []


@pytest.mark.parametrize("kind", sorted(__import__("guides").KINDS))
def test_dask_serialize_round_trips_every_kind_through_pickle(kind, dask_errors):
    from distributed.protocol import deserialize, serialize

    _, guide, _ = build(kind)
    before = snapshot(guide)
    header, frames = serialize(guide, on_error="raise")
    assert header["serializer"] == "pickle"
    copy = deserialize(header, frames)
    assert snapshot(guide) == before
    assert type(copy) is type(guide)
    assert dask_errors == []


def test_unpatch_restores_dasks_registry_exactly_and_patch_registers_again():
    from distributed.protocol import serialize
    from distributed.protocol.serialize import dask_serialize

    _, guide, _ = build("AutoNormal")
    pyro_pickle_fix.unpatch()
    try:
        assert serialize(guide, on_error="raise")[0]["serializer"] == "dask"  # Dask caches it
        stock = dict(dask_serialize._lookup)
        assert not any(getattr(f, "_pyro_pickle_fix", False) for f in stock.values())
        pyro_pickle_fix.patch()
        assert serialize(guide, on_error="raise")[0]["serializer"] == "pickle"
        pyro_pickle_fix.unpatch()
        assert dask_serialize._lookup == stock  # exactly, the cached AutoNormal entry too
    finally:
        pyro_pickle_fix.patch()
    rows = {row.target: row for row in pyro_pickle_fix.status().targets}
    assert rows["distributed.protocol.serialize.dask_serialize"].wrapped is True


@pytest.mark.parametrize("order", ["distributed first", "pyro_pickle_fix first"])
def test_dask_registration_holds_in_either_import_order(order):
    imports = ["import distributed.protocol", "import pyro_pickle_fix, pyro"]
    if order == "pyro_pickle_fix first":
        imports.reverse()
    found = run_json(
        "\n".join(imports) + "\n"
        "import json, sys\n"
        f"sys.path.insert(0, {str(TESTS)!r})\n"
        "from guides import build\n"
        "from distributed.protocol import serialize\n"
        "_, guide, _ = build('AutoGuideList')\n"
        "print(json.dumps(serialize(guide, on_error='raise')[0]['serializer']))"
    )
    assert found == "pickle"


# Everything above, with the fix disabled on the driver: the corruption shows.
# (multiprocessing pools: test_pools.py.)
STOCK = """
import json, sys
sys.path.insert(0, {tests!r})
import ray, distributed
from distributed import Client, LocalCluster
from guides import build
from engine_work import sample_in_worker
from pyro_pickle_fix.diagnostics.snapshot import snapshot
ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
         runtime_env={{"env_vars": {{"PYTHONPATH": {tests!r}}}}})
found = {{}}
def ship(name, kind, send):
    _, guide, kwargs = build(kind)
    before = snapshot(guide)
    try:
        send(guide, kwargs)
        error = None
    except Exception as e:
        error = type(e).__name__
    found[kind + " " + name] = {{"changed": snapshot(guide) != before, "error": error}}
with LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                  dashboard_address=None) as cluster, Client(cluster) as client:
    for kind in {kinds!r}:
        ship("ray", kind, lambda g, k: ray.get(
            ray.remote(sample_in_worker).remote(ray.put(g), k, 7), timeout=120))
        ship("dask submit", kind, lambda g, k: client.submit(
            sample_in_worker, g, k, 7, pure=False).result(timeout=120))
    from engine_work import Trainer
    actor = ray.remote(Trainer).remote("AutoNormal")
    ray.get(actor.checkpoint.remote(), timeout=120)
    found["ray worker"] = ray.get(actor.report.remote(), timeout=120)
    import logging
    from distributed.protocol import deserialize, serialize
    logged = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = logged.append
    logging.getLogger("distributed").addHandler(handler)
    _, guide_list, _ = build("AutoGuideList")
    try:
        deserialize(*serialize(guide_list, on_error="raise"))
        found_error = None
    except Exception as e:
        found_error = str(e)
ray.shutdown()
found["dask serialize"] = {{"error": found_error, "logged": len(logged)}}
print(json.dumps(found))
"""


def test_without_the_fix_every_engine_corrupts_the_drivers_guide():
    found = run_json(STOCK.format(tests=str(TESTS), kinds=KINDS), fix=False, timeout=600)
    # Dask's generic serializer walks the guide list's __dict__ into a weakref
    dask = found.pop("dask serialize")
    assert (dask["error"] or "").startswith("Could not serialize object of type ReferenceType")
    assert dask["logged"] > 0  # "Failed to serialize <weakref ...>", with tracebacks
    worker = found.pop("ray worker")  # a Ray worker without worker activation
    assert worker["fix"] is False and worker["intact"] is False, worker
    assert len(found) == 2 * len(KINDS)
    for case, outcome in found.items():
        # AutoGuide clears _model/master; every PyroModule loses pyro's weakref.
        assert outcome["changed"] is True, case


# Worker side: a worker that trains a guide, checkpoints it twice and keeps
# training keeps its own guide intact only with worker activation.
def _ray_worker(tmp_path):
    actor = ray.remote(Trainer).remote("AutoNormal")
    try:
        returned = ray.get(actor.checkpoint.remote(), timeout=TIMEOUT)
        ray.get(actor.save.remote(str(tmp_path / "guide.pt")), timeout=TIMEOUT)
        return returned, ray.get(actor.report.remote(), timeout=TIMEOUT)
    finally:
        ray.kill(actor)


def test_ray_worker_setup_hook_activates_the_fix_in_workers(ray_instance, tmp_path):
    returned, report = _ray_worker(tmp_path)
    assert report == {"fix": True, "intact": True, "error": None}
    assert type(returned).__name__ == "AutoNormal"


def _dask_worker(client, tmp_path):
    trainer = client.submit(Trainer, "AutoNormal", actor=True).result(timeout=TIMEOUT)
    returned = trainer.checkpoint().result(timeout=TIMEOUT)
    trainer.save(str(tmp_path / "guide.pt")).result(timeout=TIMEOUT)
    return returned, trainer.report().result(timeout=TIMEOUT)


@pytest.mark.parametrize("activation", ["preload", "plugin", "none"])
def test_dask_worker_activation(activation, tmp_path):
    from distributed import Client, LocalCluster

    preload = ["pyro_pickle_fix"] if activation == "preload" else []
    with (
        LocalCluster(
            n_workers=1,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            preload=preload,
            env={"PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])},
        ) as cluster,
        Client(cluster, timeout=TIMEOUT) as client,
    ):
        if activation == "plugin":
            client.register_plugin(pyro_pickle_fix.DaskWorkerPlugin())
        returned, report = _dask_worker(client, tmp_path)
    assert type(returned).__name__ == "AutoNormal"
    if activation == "none":
        assert report["fix"] is False and report["intact"] is False, report
    else:
        assert report == {"fix": True, "intact": True, "error": None}


# Start-up activation (`pyro-pickle-fix install`) reaches every kind of worker.
WORKERS = """
import json, multiprocessing, sys
import ray
from distributed import Client, LocalCluster

def probe():
    import pyro  # noqa: F401  (the fix applies once pyro is imported)
    fix = sys.modules.get("pyro_pickle_fix")
    return bool(fix is not None and fix.is_patched())

if __name__ == "__main__":
    found = {}
    for method in ("spawn", "forkserver"):
        with multiprocessing.get_context(method).Pool(1) as pool:
            found[method] = pool.apply(probe)
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    found["ray"] = ray.get(ray.remote(probe).remote(), timeout=120)
    ray.shutdown()
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        found["dask"] = client.submit(probe, pure=False).result(timeout=120)
    print(json.dumps(found))
"""


@pytest.mark.slow
def test_install_activates_the_fix_in_ray_dask_and_pool_workers(tmp_path):
    import json
    import subprocess

    from scratch_env import build_wheel, link_dependencies, make_env

    python, _ = make_env(
        tmp_path / "venv", build_wheel(tmp_path / "wheel"), link_dependencies(tmp_path / "deps")
    )
    script = tmp_path / "workers.py"
    script.write_text(WORKERS)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYRO_PICKLE_FIX", "PYTHON"))}

    def workers():
        done = subprocess.run(
            [python, str(script)], env=env, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    assert workers() == dict.fromkeys(["spawn", "forkserver", "ray", "dask"], False)
    cli = [python, "-m", "pyro_pickle_fix"]
    assert subprocess.run([*cli, "install"], env=env, check=False).returncode == 0
    assert workers() == dict.fromkeys(["spawn", "forkserver", "ray", "dask"], True)
