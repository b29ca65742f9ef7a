"""The command line: ``python -m pyro_pickle_fix`` / ``pyro-pickle-fix``."""

from __future__ import annotations

import argparse
import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

PROG = "pyro-pickle-fix"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # One line that says what is wrong and where to look, instead of argparse's usage dump.
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Make serializing Pyro guides (pickle, torch.save, copy) leave the "
        "live guide untouched.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    check = commands.add_parser(
        "check",
        help="run the EasyGuide save/load reproduction without and with the fix",
        description="Train an EasyGuide, torch.save it, load it and train both again, "
        "in two fresh interpreters: one without the fix, one with it. Exit 0 when the "
        "fix leaves this environment safe.",
    )
    check.add_argument("--json", action="store_true", help="print both outcomes as JSON")
    from .diagnostics.audit import PATHS

    audit = commands.add_parser(
        "audit",
        help="serialize your own object along every path, without and with the fix",
        description="Call MODULE:CALLABLE (a zero-argument factory returning the object "
        "to audit, or a tuple (object, call) where call(obj) exercises it) once per "
        "serialization path, in two fresh interpreters: without and with the fix. For "
        "each path: did it save, did the live object change (and where), do the live "
        "object and the copy still work. Exit 0 when, with the fix, every path leaves "
        "the object unchanged and working; 1 when not; 2 when the object cannot be had.",
    )
    audit.add_argument("factory", metavar="MODULE:CALLABLE")
    audit.add_argument(
        "--paths",
        nargs="+",
        choices=list(PATHS),
        default=[],
        metavar="PATH",
        help=f"only these paths (default: all of {', '.join(PATHS)})",
    )
    audit.add_argument("--json", action="store_true", help="print both reports as JSON")
    verify = commands.add_parser(
        "verify",
        help="check a param-store or optimizer file before you load it",
        description="Read each FILE through the same checks as pyro's two loads "
        "(pyro.get_param_store().load(), optim.load()), change nothing, and print what "
        "it holds (each parameter's name, shape, dtype and constraint; an optimizer's "
        "parameters, state and schedulers) and a verdict. For a file only "
        "torch.load(weights_only=False) can load (a whole guide), list the globals it "
        "would import, without running anything. Exit 0 when every file loads, 1 when "
        "one is refused, 2 when one cannot be read.",
    )
    verify.add_argument("files", nargs="+", metavar="FILE")
    verify.add_argument("--json", action="store_true", help="print the reports as JSON")
    commands.add_parser(
        "status",
        help="show what is patched here and whether start-up activation is installed",
        description="Imports pyro, then shows per patch target: wrapped or not, needed or "
        "not for the installed pyro-ppl; then where start-up activation is installed and "
        "whether it runs.",
    )
    for name, action in (("install", "add"), ("uninstall", "remove")):
        command = commands.add_parser(
            name,
            help=f"{action} start-up activation (a block in sitecustomize.py)",
            description=f"{action.capitalize()} the marked pyro-pickle-fix block in "
            "sitecustomize.py, so that every interpreter of this environment "
            f"{'activates' if name == 'install' else 'no longer activates'} the fix. "
            "Other content of the file is kept byte for byte.",
        )
        command.add_argument(
            "--target",
            metavar="DIR",
            help="directory of the sitecustomize.py (default: this interpreter's site-packages)",
        )
    return parser


def _import_targets() -> None:
    """Import pyro's target modules, so that status shows what a program using
    pyro gets here (a process that never imports pyro has nothing wrapped)."""
    import contextlib
    import importlib

    from ._engine import repairs

    triggers = [r.trigger for r in repairs() if r.package in ("pyro-ppl", "torch")]
    for name in dict.fromkeys(triggers):
        with contextlib.suppress(ImportError):  # status says so for each target
            importlib.import_module(name)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; returns the exit code.  A reader that closes the pipe
    early (``pyro-pickle-fix status | head -2``) ends it quietly, as ``cat`` does."""
    try:
        try:
            return _run(argv)
        finally:
            sys.stdout.flush()  # a closed pipe shows here (--version too), not at exit
    except BrokenPipeError:
        # Python would flush stdout again at exit and print a second error.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 1


def _warn(message: str) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr)


def _run(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "check":
        from .diagnostics.check import main as check

        return check(as_json=args.json)
    if args.command == "verify":
        from .diagnostics.verify import main as verify

        return verify(args.files, as_json=args.json)
    if args.command == "audit":
        from .diagnostics.audit import audit_main

        return audit_main(args.factory, args.paths, args.json)

    from . import _installer as installer
    from .errors import InstallError

    if args.command == "status":
        from . import status

        _import_targets()
        print(status())
        print(installer.describe())
        return 0
    try:
        if args.command == "install":
            path, changed = installer.install(args.target)
            print(f"{PROG}: {'installed in' if changed else 'already installed in'} {path}")
            shadow = installer.shadowing(path)
            if not installer.on_search_path(path):
                _warn(
                    f"{os.path.dirname(path)} is not on this interpreter's sys.path, so "
                    "the block does not run at start-up; add the directory to PYTHONPATH "
                    "(or a .pth file in site-packages), or install without --target"
                )
            elif shadow is not None:
                _warn(
                    f"Python imports {shadow} first, so this block does "
                    f"not run; add the block there (--target) or remove that file"
                )
        else:
            path, changed = installer.uninstall(args.target)
            if changed:
                print(f"{PROG}: removed from {path}")
            else:
                print(f"{PROG}: not installed in {path}; nothing to do")
    except InstallError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 1
    return 0
