"""JAX's persistent compilation cache, so a second run does not recompile."""

import os
from pathlib import Path

import jax


def default_cache_dir() -> Path:
    """``$OL_JAX_CACHE`` or ``$XDG_CACHE_HOME/ol_jax`` (default ``~/.cache/ol_jax``)."""
    root = os.environ.get("OL_JAX_CACHE")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(xdg) / "ol_jax"


def enable_compilation_cache(path: str | os.PathLike | None = None) -> Path:
    """Turns on JAX's persistent compilation cache in ``path``.

    Args:
      path: the cache folder; default ``default_cache_dir() / "jax"``.

    Returns:
      The folder used.
    """
    folder = Path(path) if path is not None else default_cache_dir() / "jax"
    folder.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return folder
