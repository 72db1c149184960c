"""Integrations with engines that run many workers: Dask first."""
