"""The parts that need no torch: the import trigger, the patching of a target,
the sitecustomize installer and start-up activation.  Runs on every supported
Python (the ``startup`` nox session) against a stand-in ``pyro`` package, and in
the full suite against the real one being absent from ``sys.path`` (``-S``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# In the matrix cells these run once per Python (the startup session runs them too).
pytestmark = [pytest.mark.slow, pytest.mark.once]  # (the startup sessions run it on every Python)

# A stand-in for pyro: PyroModule.__getstate__ strips a marker from every live
# "parameter", as pyro strips its weakref (and returns the live __dict__, as
# object.__getstate__ does from Python 3.11 on).
STANDIN = {
    # (Installed as a release the fix knows, so that its repairs apply.)
    "pyro_ppl-1.9.1.dist-info/METADATA": "Metadata-Version: 2.1\nName: pyro-ppl\nVersion: 1.9.1\n",
    "pyro/__init__.py": "",
    "pyro/nn/__init__.py": "",
    "pyro/nn/module.py": (
        "class Param:\n"
        "    pass\n"
        "class PyroModule:\n"
        "    def __init__(self):\n"
        "        p = Param(); p.unconstrained = 'link'\n"
        "        self._parameters = {'loc': p}\n"
        "        self._modules = {}\n"
        "    def __getstate__(self):\n"
        "        for p in self.__dict__['_parameters'].values():\n"
        "            p.__dict__.pop('unconstrained', None)\n"
        "        return self.__dict__\n"
    ),
}

PROBE = """
import json, pickle, sys
import pyro_pickle_fix
before_pyro = sorted(m for m in sys.modules if m.split('.')[0] in ('wrapt', 'pyro', 'torch'))
import pyro.nn.module as m
guide = m.PyroModule()
param = guide._parameters['loc']
pickle.loads(pickle.dumps(guide))
print(json.dumps({'before_pyro': before_pyro, 'patched': pyro_pickle_fix.is_patched(),
                  'kept': param.__dict__.get('unconstrained'),
                  'wrapt': 'wrapt' in sys.modules}))
"""


@pytest.fixture
def standin(tmp_path: Path) -> Path:
    for name, text in STANDIN.items():
        path = tmp_path / "standin" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path / "standin"


def python(
    code: str, env: dict[str, str], *args: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    environment = {
        k: v for k, v in os.environ.items() if not k.startswith(("PYRO_PICKLE_FIX", "PYTHONPATH"))
    }
    environment.update(env)
    return subprocess.run(
        [sys.executable, *args, "-c", code],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=cwd,
    )


def probe(standin: Path, fix: str, *, extra_path: Path | None = None) -> dict:
    paths = [str(standin)] + ([str(extra_path)] if extra_path else [])
    done = python(PROBE, {"PYTHONPATH": os.pathsep.join(paths), "PYRO_PICKLE_FIX": fix})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_trigger_patches_pyro_when_it_is_imported_and_not_before(standin):
    fixed = probe(standin, "1")
    assert fixed["before_pyro"] == []  # no wrapt, pyro or torch until pyro is imported
    assert fixed["patched"] is True and fixed["wrapt"] is True
    assert fixed["kept"] == "link"  # the live parameter kept its link
    stock = probe(standin, "0")
    assert stock["patched"] is False and stock["wrapt"] is False
    assert stock["kept"] is None  # the stand-in's bug, left as it is


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pyro_pickle_fix", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("PYRO_PICKLE_FIX")},
    )


STARTED = (
    "import json, sys; print(json.dumps(['pyro_pickle_fix' in sys.modules, "
    "sorted(m for m in sys.modules if m.split('.')[0] in ('wrapt', 'torch', 'pyro'))]))"
)


def test_sitecustomize_install_activates_at_start_up_and_uninstall_restores(tmp_path, standin):
    target = tmp_path / "site"
    target.mkdir()
    user = b"# the user's own start-up code\r\nVALUE = 1"
    (target / "sitecustomize.py").write_bytes(user)
    env = {"PYTHONPATH": os.pathsep.join([str(target), str(standin)])}

    done = _cli("install", "--target", str(target))
    assert done.returncode == 0, done.stderr
    assert f"installed in {target / 'sitecustomize.py'}" in done.stdout
    started = python(STARTED, env)
    assert json.loads(started.stdout) == [True, []], started.stderr
    assert probe(standin, "", extra_path=target)["kept"] == "link"  # never imports the fix itself

    done = _cli("uninstall", "--target", str(target))
    assert done.returncode == 0, done.stderr
    assert (target / "sitecustomize.py").read_bytes() == user
    assert json.loads(python(STARTED, env).stdout) == [False, []]


def test_a_bad_environment_value_warns_at_start_up_and_keeps_the_fix_on(tmp_path, standin):
    done = python(
        "import pyro_pickle_fix, pyro.nn.module; print(pyro_pickle_fix.is_patched())",
        {"PYTHONPATH": str(standin), "PYRO_PICKLE_FIX": "perhaps"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"
    assert "PYRO_PICKLE_FIX='perhaps' is not understood; the fix stays on" in done.stderr


def test_without_pyro_import_succeeds_and_says_what_to_do(tmp_path):
    # -S: no site-packages, so no pyro (nor wrapt, nor torch); only this package.
    import importlib.util

    spec = importlib.util.find_spec("pyro_pickle_fix")  # not imported: that would warn here
    assert spec is not None and spec.origin is not None
    shutil.copytree(Path(spec.origin).parent, tmp_path / "pyro_pickle_fix")
    done = python(
        "import pyro_pickle_fix; print(pyro_pickle_fix.status())",
        {"PYTHONPATH": str(tmp_path)},
        "-S",
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("PyroPickleFixWarning") == 1, done.stderr
    assert "pyro-ppl is not installed in this environment" in done.stderr
    assert "Install pyro-ppl, or uninstall pyro-pickle-fix" in done.stderr
    assert "pyro-ppl not installed" in done.stdout
