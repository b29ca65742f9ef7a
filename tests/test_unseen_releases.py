"""A torch or pyro-ppl newer than any the package has seen: pip installs the wheel
beside it (no upper bound to resolve against), and the import warns once and works,
leaving stock what it was not verified against (issue 24)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from scratch_env import bare_env, build_wheel, link_dependencies

pytestmark = [pytest.mark.slow, pytest.mark.once]

UNSEEN = {"torch": "2.16.0", "pyro-ppl": "1.10.0", "wrapt": "2.9.0"}


def _metadata(name: str, version: str) -> str:
    return f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"


def _stand_in_wheel(directory: Path, name: str, version: str) -> Path:
    """A wheel that holds only the metadata of ``name`` at ``version``."""
    stem = f"{name.replace('-', '_')}-{version}"
    path = directory / f"{stem}-py3-none-any.whl"
    info = f"{stem}.dist-info"
    files = {
        f"{info}/METADATA": _metadata(name, version),
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    files[f"{info}/RECORD"] = "".join(f"{n},,\n" for n in [*files, f"{info}/RECORD"])
    with zipfile.ZipFile(path, "w") as wheel:
        for member, text in files.items():
            wheel.writestr(member, text)
    return path


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    return build_wheel(tmp_path_factory.mktemp("wheel"))


def test_pip_resolves_the_wheel_beside_an_unseen_torch_and_pyro(wheel, tmp_path):
    for name, version in UNSEEN.items():
        _stand_in_wheel(tmp_path, name, version)
    wanted = [f"{name}=={version}" for name, version in UNSEEN.items() if name != "wrapt"]
    pip = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report", "-"]
    local = ["--no-index", "--find-links", str(tmp_path), "--ignore-installed"]
    # (Not the machine's pip configuration: it may cap torch for its own reasons.)
    done = subprocess.run(
        [*pip, *local, str(wheel), *wanted],
        capture_output=True,
        text=True,
        env={"PIP_CONFIG_FILE": os.devnull, "PIP_CONSTRAINT": os.devnull, "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    chosen = {i["metadata"]["name"]: i["metadata"]["version"] for i in report["install"]}
    assert chosen["torch"] == UNSEEN["torch"] and chosen["pyro-ppl"] == UNSEEN["pyro-ppl"]


UNSEEN_PYRO = """
import io, json, warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import pyro, pyro.contrib.easyguide, torch
    import pyro_pickle_fix
    import pyro.distributions as dist
    from pyro.infer.autoguide import AutoNormal
    def model():
        pyro.sample("z", dist.Normal(0.0, 1.0))
    guide = AutoNormal(model)
    guide()
    torch.save(guide, io.BytesIO())
    rows = {r.target: r for r in pyro_pickle_fix.status().targets}
ours = [str(w.message) for w in caught if w.category.__name__ == "PyroPickleFixWarning"]
print(json.dumps({
    "warnings": ours,
    "patched": pyro_pickle_fix.is_patched(),
    "version": pyro_pickle_fix.status().pyro,
    "autoguide": rows["pyro.infer.autoguide.guides.AutoGuide.__getstate__"].note,
    "tensor": rows["torch._tensor.Tensor.__getstate__"].wrapped,
}))
"""


def test_an_unseen_pyro_imports_with_one_warning_and_saves_as_stock(wheel, tmp_path):
    dependencies = link_dependencies(tmp_path / "deps")
    for info in dependencies.glob("pyro_ppl-*.dist-info"):
        info.unlink()  # the real metadata is replaced by a newer release's
    stand_in = dependencies / f"pyro_ppl-{UNSEEN['pyro-ppl']}.dist-info"
    stand_in.mkdir()
    (stand_in / "METADATA").write_text(_metadata("pyro-ppl", UNSEEN["pyro-ppl"]))
    python, _ = bare_env(tmp_path / "env", dependencies)
    pip = [sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps"]
    subprocess.run([*pip, "--no-index", str(wheel)], check=True)
    done = subprocess.run(
        [python, "-c", UNSEEN_PYRO], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["version"] == UNSEEN["pyro-ppl"]
    assert len(found["warnings"]) == 1, found["warnings"]
    assert "pyro-ppl 1.10.0 is outside the releases" in found["warnings"][0]
    assert found["patched"] is False
    assert "not verified against pyro-ppl 1.10.0" in found["autoguide"]
    assert found["tensor"] is True  # what calls torch's own code still applies
