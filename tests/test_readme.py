"""Every code block of the README, run as a new user would: ``pip install .`` from
a clone into a fresh environment, then each command and each Python block in order;
and every code block of each page under docs/, in order, in this environment."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from scratch_env import ROOT, bare_env, link_dependencies

# The README's text is the same everywhere: its blocks run in one cell.
pytestmark = [pytest.mark.slow, pytest.mark.once]

FENCE = re.compile(r"^( *)```(\w+)\n(.*?)^\1```", re.M | re.S)


PAGES = sorted((ROOT / "docs").glob("*.md"))


def blocks(page: Path = ROOT / "README.md") -> list[tuple[str, str]]:
    """(language, code) of each fenced block, in order; ``text`` blocks are output."""
    found = []
    for match in FENCE.finditer(page.read_text()):
        indent, language, code = match.groups()
        code = "\n".join(line[len(indent) :] for line in code.splitlines())
        found.append((language, code))
    return found


def test_the_readme_has_only_blocks_this_test_runs():
    assert {language for language, _ in blocks()} <= {"python", "sh", "text"}
    assert sum(language != "text" for language, _ in blocks()) >= 6


@pytest.mark.skipif(
    not hasattr(torch.serialization, "safe_globals"),
    reason="the README's load example uses torch.serialization.safe_globals (torch 2.5+)",
)
def test_every_readme_block_runs_in_order(tmp_path):
    clone = tmp_path / "clone"  # a clone's files (an sdist has no .git to clone)
    shutil.copytree(ROOT, clone, ignore=shutil.ignore_patterns(".*", "build", "*.egg-info"))
    env_dir = tmp_path / "env"
    python, site = bare_env(env_dir, link_dependencies(tmp_path / "deps"))
    work = tmp_path / "work"
    work.mkdir()
    environment = {
        k: v for k, v in os.environ.items() if not k.startswith(("PYRO_PICKLE_FIX", "PYTHON"))
    }
    environment["PATH"] = f"{env_dir / 'bin'}{os.pathsep}{environment['PATH']}"

    def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=900
        )
        assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
        return done

    ran = []
    # The user installs before running the example that opens the README.
    ordered = sorted(blocks(), key=lambda block: "pip install ." not in block[1])
    for language, code in ordered:
        if language == "python":
            first = code.splitlines()[0]
            if re.fullmatch(r"# [\w]+\.py", first):  # a file the next commands use
                (work / first[2:]).write_text(code)
            else:
                run([python, "-c", code], work)
            ran.append(first)
        elif language == "sh":
            for line in code.splitlines():
                if not line.strip() or line.startswith("#"):
                    continue
                words = shlex.split(line)
                if words[0] == "pip":
                    # pip itself is the host's, working on the new environment.
                    words = [sys.executable, "-m", "pip", "--python", python, *words[1:]]
                run(words, clone if words[-1] == "." else work)
                ran.append(line)
    assert "pip install ." in ran and "pyro-pickle-fix check" in ran
    assert ran[-1] == "pip uninstall --yes pyro-pickle-fix"
    assert not (site / "pyro_pickle_fix").exists()


def test_the_opening_example_fails_without_the_fix():
    from support import run_python

    page = ROOT / "docs" / "how-it-works.md"
    example = next(code for language, code in blocks(page) if language == "python")
    stock = run_python(example, fix=False)
    assert stock.returncode == 1
    assert stock.stderr.strip().splitlines()[-1] == (
        "TypeError: 'NoneType' object is not subscriptable"
    )
    assert run_python(example, fix=True).returncode == 0


def test_the_docs_have_only_blocks_this_test_runs():
    assert PAGES, "no pages under docs/"
    for page in PAGES:
        languages = {language for language, _ in blocks(page)}
        assert languages <= {"python", "sh", "text"}, page.name
        # A page's commands run in this environment: nothing there installs.
        commands = [code for language, code in blocks(page) if language == "sh"]
        assert not any("pip " in code for code in commands), page.name
        assert "--target" not in "".join(commands), page.name


@pytest.mark.skipif(
    not hasattr(torch.serialization, "safe_globals"),
    reason="the docs' load example uses torch.serialization.safe_globals (torch 2.5+)",
)
@pytest.mark.parametrize("page", PAGES, ids=[page.name for page in PAGES])
def test_every_docs_block_runs_in_order(page, tmp_path):
    environment = {
        k: v for k, v in os.environ.items() if not k.startswith(("PYRO_PICKLE_FIX", "PYTHON"))
    }
    ran = 0
    for language, code in blocks(page):
        if language == "python":
            first = code.splitlines()[0]
            if re.fullmatch(r"# [\w]+\.py", first):  # a file the next commands use
                (tmp_path / first[2:]).write_text(code)
                continue
            commands = [[sys.executable, "-c", code]]
        elif language == "sh":
            lines = [line for line in code.splitlines() if line.strip()]
            assert all(line.startswith("pyro-pickle-fix ") for line in lines), page.name
            commands = [
                [sys.executable, "-m", "pyro_pickle_fix", *shlex.split(line)[1:]] for line in lines
            ]
            # install and uninstall run on a directory of their own, off sys.path: the
            # suite's environment, which other tests share, stays as it is (the README's
            # test runs them on site-packages, in an environment of its own).
            for command in commands:
                if command[3] in ("install", "uninstall"):
                    command += ["--target", str(tmp_path)]
        else:
            continue
        for command in commands:
            done = subprocess.run(
                command,
                cwd=tmp_path,
                env=environment,
                capture_output=True,
                text=True,
                timeout=900,
                check=False,
            )
            assert done.returncode == 0, f"{page.name}: {command}\n{done.stdout}\n{done.stderr}"
            ran += 1
    # The opening example of how-it-works.md fails without the fix, and runs here.
    assert ran or not any(language != "text" for language, _ in blocks(page))
