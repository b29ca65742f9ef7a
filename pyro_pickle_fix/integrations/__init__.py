"""Integrations with engines that serialize Pyro objects their own way (Dask).
Each is an entry of the one patch table, armed by the same trigger."""
