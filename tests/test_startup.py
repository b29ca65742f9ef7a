"""Start-up activation through sitecustomize, in real virtual environments
(issue: activation at interpreter start)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from scratch_env import ROOT, build_wheel, link_dependencies, make_env
from support import GROUP_BUG

SCENARIO = ROOT / "pyro_pickle_fix" / "diagnostics" / "tutorial.py"
# The reproduction, run from its file by a script that never imports pyro_pickle_fix.
REPRODUCE = f"""
import io, json, sys, torch
sys.path.insert(0, {str(SCENARIO.parent)!r})
import tutorial as scenario  # the file alone, as a top-level module: not the package
guide, train_more = scenario.trained_guide()
held = [p for p in guide.parameters() if "unconstrained" in p.__dict__]
torch.save(guide, io.BytesIO())
unchanged = bool(held) and all("unconstrained" in p.__dict__ for p in held)
try:
    train_more(guide)
    error = None
except Exception as e:
    error = type(e).__name__ + ": " + str(e)
fix = sys.modules.get("pyro_pickle_fix")
print(json.dumps({{"fix_active": bool(fix and fix.is_patched()),
                  "original": {{"ok": error is None, "error": error, "unchanged": unchanged}}}}))
"""

# Real venvs with pyro: in one cell (tests/test_stdlib.py shows start-up activation
# on every Python, in the startup sessions).
pytestmark = [pytest.mark.slow, pytest.mark.once]


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package, built once from this checkout (non-editable)."""
    return build_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="session")
def dependencies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return link_dependencies(tmp_path_factory.mktemp("deps"))


class Env:
    """A fresh virtual environment with the package installed from the wheel."""

    def __init__(self, root: Path, wheel: Path, dependencies: Path) -> None:
        self.root = root
        self.python, self.site = make_env(root, wheel, dependencies)

    def run(
        self,
        code: str,
        *,
        env: dict[str, str] | None = None,
        check: bool = False,
        args: list[str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        environment = {
            k: v for k, v in os.environ.items() if not k.startswith(("PYRO_PICKLE_FIX", "PYTHON"))
        }
        environment.update(env or {})
        command = [self.python, *(args if args is not None else ["-c", code])]
        done = subprocess.run(
            command, env=environment, capture_output=True, text=True, timeout=600, check=False
        )
        if check:
            assert done.returncode == 0, done.stderr
        return done

    def cli(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return self.run("", env=env, args=["-m", "pyro_pickle_fix", *args])

    @property
    def sitecustomize(self) -> Path:
        return self.site / "sitecustomize.py"


@pytest.fixture
def venv(tmp_path: Path, wheel: Path, dependencies: Path) -> Env:
    return Env(tmp_path / "venv", wheel, dependencies)


def reproduce(env: Env) -> dict:
    done = env.run(REPRODUCE, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_install_fixes_a_script_that_never_imports_the_package_and_uninstall_undoes_it(venv):
    done = venv.cli("install")
    assert done.returncode == 0, done.stderr
    assert f"installed in {venv.sitecustomize}" in done.stdout
    fixed = reproduce(venv)
    assert fixed["fix_active"] is True
    assert fixed["original"] == {"ok": True, "error": None, "unchanged": True}

    assert venv.cli("uninstall").returncode == 0
    assert not venv.sitecustomize.exists()  # we created it, nothing else was in it
    stock = reproduce(venv)
    assert stock["fix_active"] is False
    assert stock["original"]["unchanged"] is False  # Parameters lose their weakref
    if GROUP_BUG:
        assert stock["original"]["error"].startswith("TypeError: PickleGuide.guide() missing 3")


def test_a_spawned_child_gets_the_fix_through_activation_alone(venv, tmp_path):
    script = tmp_path / "spawn_child.py"
    script.write_text(
        "import json, multiprocessing, sys\n"
        "def child():\n"
        "    import pyro.contrib.easyguide  # noqa: F401\n"
        "    fix = sys.modules.get('pyro_pickle_fix')\n"
        "    return bool(fix and fix.is_patched())\n"
        "if __name__ == '__main__':\n"
        "    with multiprocessing.get_context('spawn').Pool(1) as pool:\n"
        "        print(json.dumps(pool.apply(child)))\n"
    )
    venv.cli("install")
    assert venv.run("", args=[str(script)], check=True).stdout.strip() == "true"
    venv.cli("uninstall")
    assert venv.run("", args=[str(script)], check=True).stdout.strip() == "false"


def test_start_up_imports_nothing_heavy_and_honours_opt_out(venv):
    venv.cli("install")
    probe = (
        "import json, sys; fix = sys.modules.get('pyro_pickle_fix'); "
        "ours = sorted(m for m in sys.modules if m.startswith('pyro_pickle_fix')); "
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'pyro', 'wrapt')); "
        "print(json.dumps([ours, heavy, bool(fix and fix.status().active)]))"
    )
    started = ["pyro_pickle_fix", "pyro_pickle_fix._trigger"]  # the package and one module
    assert json.loads(venv.run(probe, check=True).stdout) == [started, [], True]
    off = venv.run(probe, env={"PYRO_PICKLE_FIX": "0"}, check=True)
    assert json.loads(off.stdout) == [started, [], False]


def test_the_block_runs_once_even_if_reached_twice(venv):
    venv.cli("install")
    done = venv.run(
        "import importlib, json, sitecustomize, pyro_pickle_fix as first\n"
        "importlib.reload(sitecustomize)\n"
        "exec(open(sitecustomize.__file__).read())\n"
        "import pyro_pickle_fix, pyro.contrib.easyguide.easyguide as e\n"
        "w = vars(e.Group)['__getstate__']\n"
        "print(json.dumps([pyro_pickle_fix is first, type(w.__wrapped__).__name__,"
        " pyro_pickle_fix.is_patched()]))",
        check=True,
    )
    assert json.loads(done.stdout) == [True, "function", True]


def test_existing_sitecustomize_is_kept_byte_for_byte(venv):
    user = b"# user's own start-up code\r\nimport os\nVALUE = '\xc3\xa9'"  # CRLF, no final newline
    venv.sitecustomize.write_bytes(user)
    assert venv.cli("install").returncode == 0
    text = venv.sitecustomize.read_bytes()
    assert text.startswith(user)
    assert (
        venv.run("import sitecustomize; print(sitecustomize.VALUE)", check=True).stdout.strip()
        == "\xe9"
    )
    again = venv.cli("install")
    assert "already installed" in again.stdout
    assert venv.sitecustomize.read_bytes() == text  # one block only
    assert text.count(b"# >>> pyro-pickle-fix >>>") == 1
    assert venv.cli("uninstall").returncode == 0
    assert venv.sitecustomize.read_bytes() == user


def test_uninstall_without_install_says_so(venv):
    done = venv.cli("uninstall")
    assert done.returncode == 0
    assert "not installed in" in done.stdout and "nothing to do" in done.stdout
    assert not venv.sitecustomize.exists()


def _make_read_only(directory: Path) -> list[str]:
    """chmod for users; chattr +i for root, whom permission bits do not stop."""
    directory.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)
    undo = []
    root = os.geteuid() == 0 and shutil.which("chattr")
    if (
        root
        and subprocess.run(["chattr", "+i", str(directory)], capture_output=True).returncode == 0
    ):
        undo = ["chattr", "-i", str(directory)]
    probe = directory / ".probe"
    try:
        probe.touch()
    except OSError:
        return undo
    probe.unlink()
    if undo:
        subprocess.run(undo, check=False)
    pytest.skip("this machine cannot make a directory read-only for this user")


def test_read_only_target_is_a_clear_error_and_writes_nothing(venv, tmp_path):
    target = tmp_path / "readonly"
    target.mkdir()
    undo = _make_read_only(target)
    try:
        done = venv.cli("install", "--target", str(target))
        assert done.returncode == 1
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert lines[0].startswith(
            f"pyro-pickle-fix: error: cannot write {target}/sitecustomize.py"
        )
        assert "--target DIR" in lines[0]
        assert list(target.iterdir()) == []
    finally:
        if undo:
            subprocess.run(undo, check=False)
        target.chmod(0o755)


def test_a_missing_target_directory_is_a_clear_error(venv, tmp_path):
    done = venv.cli("install", "--target", str(tmp_path / "nowhere"))
    assert done.returncode == 1
    assert "is not a directory" in done.stderr


def test_a_shadowing_sitecustomize_is_detected(venv, tmp_path):
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "sitecustomize.py").write_text("SHADOW = True\n")
    env = {"PYTHONPATH": str(earlier)}
    done = venv.cli("install", env=env)
    assert done.returncode == 0
    assert f"Python imports {earlier / 'sitecustomize.py'} first" in done.stderr
    status = venv.cli("status", env=env)
    assert "does not run" in status.stdout and str(earlier / "sitecustomize.py") in status.stdout
    plain = venv.cli("status")
    assert f"start-up activation: installed in {venv.sitecustomize}" in plain.stdout


def test_a_broken_installation_does_not_disturb_start_up(venv):
    venv.cli("install")
    package = venv.site / "pyro_pickle_fix"
    shutil.rmtree(package)
    done = venv.run("pass")
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    debug = venv.run("pass", env={"PYRO_PICKLE_FIX_DEBUG": "1"})
    assert debug.returncode == 0
    lines = debug.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pyro-pickle-fix: start-up activation skipped:")
    assert "ModuleNotFoundError" in lines[0]


def test_console_script_and_help(venv):
    script = venv.root / "bin" / "pyro-pickle-fix"
    for command in ([], ["check"], ["status"], ["verify"], ["install"], ["uninstall"]):
        done = subprocess.run([str(script), *command, "--help"], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("usage: pyro-pickle-fix")
    status = subprocess.run([str(script), "status"], capture_output=True, text=True)
    assert status.returncode == 0 and "start-up activation: not installed" in status.stdout
    wrong = subprocess.run([str(script), "frobnicate"], capture_output=True, text=True)
    assert wrong.returncode == 2
    assert wrong.stderr.count("\n") == 1 and "--help" in wrong.stderr
