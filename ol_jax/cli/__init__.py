"""The ``ol-jax`` command line."""

from ol_jax.cli._main import main as main

__all__ = ["main"]
