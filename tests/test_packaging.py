"""What users install: declared Pythons and bounds agree everywhere, and the
tested package is the installed wheel in the matrix.  (The README's commands,
its install command first, run in tests/test_readme.py.)"""

from __future__ import annotations

import ast
import os
import re
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from scratch_env import ROOT

import pyro_pickle_fix


def _noxfile_pythons() -> list[str]:
    tree = ast.parse((ROOT / "noxfile.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "PYTHONS":
            return list(ast.literal_eval(node.value))
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "PYTHONS":
            return list(ast.literal_eval(node.value))
    raise AssertionError("noxfile.py has no PYTHONS")


def test_requires_python_classifiers_and_ci_pythons_agree():
    text = (ROOT / "pyproject.toml").read_text()
    (minimum,) = re.findall(r'requires-python = ">=(3\.\d+)"', text)
    classifiers = re.findall(r'"Programming Language :: Python :: (3\.\d+)"', text)
    pythons = _noxfile_pythons()
    assert classifiers == pythons, (classifiers, pythons)
    assert pythons[0] == minimum
    assert "3.11" in pythons and sys.version_info[:2] >= tuple(map(int, minimum.split(".")))
    cells = {
        cell[0]
        for cell in __import__("ast").literal_eval(
            re.search(r"CELLS = (\[.*?\])\n", (ROOT / "noxfile.py").read_text(), re.S).group(1)
        )
    }
    assert cells == set(pythons)  # every declared Python has test cells


@pytest.mark.skipif(
    os.environ.get("PYRO_PICKLE_FIX_TEST_INSTALLED") != "1", reason="only in the matrix cells"
)
def test_the_matrix_tests_the_installed_wheel_not_the_checkout():
    location = Path(pyro_pickle_fix.__file__).resolve()
    assert "site-packages" in location.parts, location
    assert location.parent != ROOT / "pyro_pickle_fix", location


def test_the_dist_check_fails_on_a_wheel_without_py_typed_or_a_module(tmp_path):
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import check_dist
    finally:
        sys.path.remove(str(ROOT / "tools"))
    with zipfile.ZipFile(tmp_path / "pyro_pickle_fix-0.0.0-py3-none-any.whl", "w") as wheel:
        wheel.writestr("pyro_pickle_fix/__init__.py", "")
        wheel.writestr("pyro_pickle_fix-0.0.0.dist-info/entry_points.txt", "")
    with tarfile.open(tmp_path / "pyro_pickle_fix-0.0.0.tar.gz", "w:gz") as sdist:
        sdist.add(ROOT / "README.md", arcname="pyro_pickle_fix-0.0.0/README.md")
    found = check_dist.problems(tmp_path)
    assert "wheel lacks pyro_pickle_fix/py.typed" in found
    assert "wheel lacks pyro_pickle_fix/_engine.py" in found
    assert "wheel lacks pyro_pickle_fix/diagnostics/audit.py" in found
    assert "wheel lacks the console script pyro-pickle-fix" in found
    assert "sdist pyro_pickle_fix-0.0.0 lacks tests/conftest.py" in found
    assert "sdist pyro_pickle_fix-0.0.0 lacks docs/loading.md" in found
    assert "wheel lacks pyro_pickle_fix/__init__.py" not in found


def _noxfile_constant(name: str):
    tree = ast.parse((ROOT / "noxfile.py").read_text())
    for node in tree.body:
        target = (
            node.target if isinstance(node, ast.AnnAssign) else getattr(node, "targets", [None])[0]
        )
        if getattr(target, "id", "") == name:
            return ast.literal_eval(node.value)
    raise AssertionError(f"noxfile.py has no {name}")


def test_declared_dependency_bounds_are_what_the_matrix_tests():
    # The oldest torch and pyro-ppl the matrix tests, and no upper bound on either (a
    # newer release is checked at run time); wrapt, which we use, up to its next major.
    from pyro_pickle_fix._repairs import KNOWN_PYRO

    text = (ROOT / "pyproject.toml").read_text()
    torch = sorted(tuple(map(int, v.split("."))) for v in _noxfile_constant("TORCH").values())
    pyros = sorted({tuple(map(int, cell[1].split("."))) for cell in _noxfile_constant("CELLS")})
    wrapts = sorted(tuple(map(int, v.split("."))) for v in _noxfile_constant("WRAPT"))
    assert f'"torch>={torch[0][0]}.{torch[0][1]}",' in text
    assert f'"pyro-ppl>={".".join(map(str, pyros[0]))}",' in text
    assert (pyros[0], pyros[-1]) == KNOWN_PYRO  # what the repairs were verified against
    assert f'"wrapt>={wrapts[0][0]}.{wrapts[0][1]},<{wrapts[-1][0] + 1}"' in text


def _imports(package: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports, at its top or inside a function."""
    modules = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in modules.items():
        here = (name if path.name == "__init__.py" else name.rpartition(".")[0]).split(".")
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = ".".join(here[: len(here) - node.level + 1] + [node.module or ""][:1])
                base = base.rstrip(".")
                for alias in node.names:
                    found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
            elif isinstance(node, ast.Import | ast.ImportFrom):
                names = [node.module] if isinstance(node, ast.ImportFrom) else []
                found |= {n for n in names + [a.name for a in node.names] if n in modules}
        graph[name] = found - {name}
    return graph


def test_the_package_imports_its_modules_in_one_direction():
    # Activation, the engine and the warning read top to bottom: no module reaches
    # itself again through what it imports (now or lazily, inside a function).
    graph = _imports(Path(pyro_pickle_fix.__file__).parent)
    for start in graph:
        seen, stack = set(), [[start]]
        while stack:
            path = stack.pop()
            for following in graph[path[-1]]:
                assert following != start, " -> ".join([*path, start])
                if following not in seen:
                    seen.add(following)
                    stack.append([*path, following])


def test_every_fast_only_cell_is_a_cell_that_would_run_the_slow_tests():
    # A stale entry would leave the slow tests where they were meant to be left out,
    # silently: CI's time grows and nothing says why.
    cells = [tuple(cell) for cell in _noxfile_constant("CELLS")]
    for cell in _noxfile_constant("FAST_ONLY"):
        assert cell in cells, cell
        assert next(c for c in cells if (c[0], c[3]) == (cell[0], cell[3])) == cell, cell
    assert cells[-1] not in _noxfile_constant("FAST_ONLY")  # the real programs run there
