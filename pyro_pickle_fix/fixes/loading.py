"""Loading pyro's own files: the param store's ``load`` and ``PyroOptim.load``
load through the package's own restricted unpickler, checked against the file
before anything is built (:mod:`pyro_pickle_fix.loader`), instead of trusting
the file or failing on pyro's constraint classes.  The same on every torch: it
needs nothing of torch's unpickler, only its zip format."""

from __future__ import annotations

from .._repairs import Bug, Repair

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

WEIGHTS_ONLY_DEFAULT = (2, 6)  # torch.load's weights_only defaults to True from here on


def _bind(filename: Any, map_location: Any = None) -> tuple[Any, Any]:
    return filename, map_location


def store_load(
    wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    """``ParamStoreDict.load(filename, map_location=None)``: the file's state,
    checked and built by the fix's own unpickler, then ``set_state``."""
    from ..loader import load_state

    instance.set_state(load_state(*_bind(*args, **kwargs)))


def optim_load(
    wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    """``PyroOptim.load(filename, map_location=None)``, the same way."""
    from ..loader import load_optim_state

    instance.set_state(load_optim_state(*_bind(*args, **kwargs)))


REPAIRS = (
    Repair(
        "pyro.params.param_store:ParamStoreDict.load",
        (
            Bug(
                "fails on every file with a constrained parameter: torch >= 2.6 loads "
                "weights-only, and pyro's constraint classes are not allowed",
                pyro_max=(1, 9, 1),
                torch_min=WEIGHTS_ONLY_DEFAULT,
                # torch 2.6 made weights_only=True torch.load's default.
                upstream="https://github.com/pytorch/pytorch/releases/tag/v2.6.0",
            ),
            Bug(
                "loads with weights_only=False: a param-store file runs whatever code it holds",
                pyro_min=(1, 9, 2),
            ),
            Bug(
                "loads with torch.load's default, weights_only=False before torch 2.6: "
                "a param-store file runs whatever code it holds",
                pyro_max=(1, 9, 1),
                torch_max=(2, 5),
            ),
            # Even weights-only: torch builds what the file says before anyone checks.
            Bug(
                "builds whatever tensors and constraints the file describes before "
                "anything is checked: sparse tensors with indices out of bounds (torch "
                "validates them on weights-only loads only from the release with this "
                "PR), tensors larger than their data, deflated records, constraints "
                "nested or broadcast far beyond the file",
                upstream="https://github.com/pytorch/pytorch/pull/184750",
            ),
        ),
        lambda owner: store_load,  # (a wrap fix is made for the class it wraps)
    ),
    Repair(
        "pyro.optim.optim:PyroOptim.load",
        (
            # 1.9.2 passes weights_only=False, for torch 2.6's new default.
            Bug(
                "loads with weights_only=False: an optimizer file runs whatever code it holds",
                pyro_min=(1, 9, 2),
            ),
            # Earlier releases take torch.load's default, weights-only from torch 2.6.
            Bug(
                "loads with torch.load's default, weights_only=False before torch 2.6: "
                "an optimizer file runs whatever code it holds",
                pyro_max=(1, 9, 1),
                torch_max=(2, 5),
            ),
            # Even weights-only: torch rebuilds it as a view that repeats the file's data.
            Bug(
                "loads a tensor that repeats the file's data (stride 0): a few KB in "
                "the file become a tensor of any size"
            ),
        ),
        lambda owner: optim_load,
    ),
)
