"""What the engine tests run in workers.  Imports pyro and the suite's guides,
never pyro_pickle_fix: a worker has the fix only if worker activation gave it."""

from __future__ import annotations

import io
import sys
from typing import Any

import torch
from guides import build, sample_in_worker, train

__all__ = ["Trainer", "fix_in_this_process", "sample_in_worker"]


def fix_in_this_process() -> bool:
    fix = sys.modules.get("pyro_pickle_fix")
    return bool(fix is not None and fix.is_patched())


class Trainer:
    """A worker that trains a guide, checkpoints it and keeps training."""

    def __init__(self, kind: str) -> None:
        self.model, self.guide, self.kwargs = build(kind)
        self.held = [p for p in self.guide.parameters() if "unconstrained" in p.__dict__]
        self.attributes = {k: id(v) for k, v in self.guide.__dict__.items()}

    def checkpoint(self) -> Any:
        return self.guide  # serialized here, in the worker, to go back to the driver

    def save(self, path: str) -> int:
        buffer = io.BytesIO()
        torch.save(self.guide, buffer)
        with open(path, "wb") as file:
            file.write(buffer.getvalue())
        return len(buffer.getvalue())

    def report(self) -> dict[str, Any]:
        """Whether the worker's live guide is as it was, and still trains."""
        intact = {k: id(v) for k, v in self.guide.__dict__.items()} == self.attributes and all(
            "unconstrained" in p.__dict__ for p in self.held
        )
        try:
            train(self.model, self.guide, self.kwargs, 2)
            error = None
        except Exception as failure:
            error = f"{type(failure).__name__}: {failure}".splitlines()[0]
        return {"fix": fix_in_this_process(), "intact": intact, "error": error}
