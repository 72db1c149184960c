"""Renderers: they read report objects and write text, nothing else."""
