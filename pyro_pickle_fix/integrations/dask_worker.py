"""A Dask worker plugin that turns the fix on in every worker of a running cluster:
``client.register_plugin(pyro_pickle_fix.DaskWorkerPlugin())``.

(New clusters can preload the package instead: ``LocalCluster(preload=["pyro_pickle_fix"])``
or ``dask worker --preload pyro_pickle_fix``.)  Importing this module imports
distributed; nothing else in the package does.
"""

from __future__ import annotations

from distributed.diagnostics.plugin import WorkerPlugin

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class DaskWorkerPlugin(WorkerPlugin):
    """Patches each worker it is installed on, now and when workers join later."""

    name = "pyro-pickle-fix"
    idempotent = True

    def setup(self, worker: Any) -> None:
        from .._engine import patch

        patch()
