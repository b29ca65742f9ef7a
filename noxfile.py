"""The linters and the test matrix (``python3 dev.py test`` runs them).

Every session installs torch==2.13.0 first: on this project's machines an
unpinned torch resolves to a CUDA build of several GB.
"""

from __future__ import annotations

import json
import os

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "tests"]

TORCH = "torch==2.13.0"
PYRO = ["1.8.6", "1.9.0", "1.9.1", "1.9.2"]
WRAPT = {"1.17": "wrapt>=1.17,<1.18", "2": "wrapt>=2,<3"}
RESULTS = os.path.join(".nox", "results")


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check, ruff format --check, mypy --strict on the package."""
    session.install(TORCH, "-e", ".[lint]")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy")


@nox.session
@nox.parametrize("wrapt", list(WRAPT))
@nox.parametrize("pyro", PYRO)
def tests(session: nox.Session, pyro: str, wrapt: str) -> None:
    """The suite against one pyro-ppl x wrapt, installed non-editable; then the
    reproduction without and with the fix, recorded for the compatibility table."""
    session.install(TORCH, f"pyro-ppl=={pyro}", WRAPT[wrapt], ".[test]")
    os.makedirs(RESULTS, exist_ok=True)
    cell = os.path.join(RESULTS, f"pyro-{pyro}-wrapt-{wrapt}")
    session.run("pytest", f"--junitxml={cell}.xml", *session.posargs)
    outcome = session.run(
        "python", "-m", "pyro_pickle_fix", "check", "--json", silent=True, success_codes=[0, 1]
    )
    with open(f"{cell}.json", "w") as file:
        json.dump(json.loads(str(outcome).strip().splitlines()[-1]), file)
