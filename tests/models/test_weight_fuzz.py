"""Fuzzed weight files: random bytes, truncated and bit-flipped valid files.

For every format, whatever the bytes, ``load_weights`` either returns a tree or
raises ``WeightFileError`` naming the file, and nothing in the folder changes.
"""

import hashlib
import os
import shutil
import tempfile

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from hypothesis import given, settings
from hypothesis import strategies as st

import ol_jax.store  # noqa: F401  (registers the "ol_jax" Orbax format)
from ol_jax.models import WeightFileError, load_weights, save_weights

TREE = {
    "enc": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3)},
    "layers": [np.float16([1.5, -2.0]), {"scale": np.float32(3.0)}],
    "head": (np.ones((3,), np.float32),),
}


def write_tiny_gguf(path):
    """A one-layer llama GGUF (F32 norms, Q8_0 and F16 matrices), no torch needed."""
    rng = np.random.default_rng(0)
    d, inter, vocab, heads = 32, 32, 16, 2
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_context_length(64)
    w.add_embedding_length(d)
    w.add_feed_forward_length(inter)
    w.add_head_count(heads)
    w.add_head_count_kv(heads)
    w.add_layer_norm_rms_eps(1e-5)
    shapes = {
        "token_embd.weight": (vocab, d),
        "output_norm.weight": (d,),
        "output.weight": (vocab, d),
        "blk.0.attn_norm.weight": (d,),
        "blk.0.ffn_norm.weight": (d,),
        "blk.0.attn_q.weight": (d, d),
        "blk.0.attn_k.weight": (d, d),
        "blk.0.attn_v.weight": (d, d),
        "blk.0.attn_output.weight": (d, d),
        "blk.0.ffn_gate.weight": (inter, d),
        "blk.0.ffn_up.weight": (inter, d),
        "blk.0.ffn_down.weight": (d, inter),
    }
    for i, (name, shape) in enumerate(shapes.items()):
        value = rng.standard_normal(shape).astype(np.float32)
        if len(shape) == 1:
            w.add_tensor(name, value)
        elif i % 2:
            w.add_tensor(name, gguf.quants.quantize(value, Q.Q8_0), raw_dtype=Q.Q8_0)
        else:
            w.add_tensor(name, value.astype(np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _valid_files():
    """``{format: {file name: bytes}}`` of small valid files, made once."""
    with tempfile.TemporaryDirectory() as folder:
        save_weights(TREE, os.path.join(folder, "w.safetensors"))
        save_weights(TREE, os.path.join(folder, "w.bin"))
        write_tiny_gguf(os.path.join(folder, "w.gguf"))
        out = {}
        for fmt, names in (
            ("safetensors", ["w.safetensors"]),
            ("binary", ["w.bin", "w.bin.json"]),
            ("gguf", ["w.gguf"]),
        ):
            out[fmt] = {}
            for name in names:
                with open(os.path.join(folder, name), "rb") as f:
                    out[fmt][name] = f.read()
        return out


VALID = _valid_files()


def snapshot(folder):
    """``{relative path: sha256 or 'dir'}`` of everything under ``folder``."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames:
            out[os.path.relpath(os.path.join(dirpath, name), folder)] = "dir"
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
            out[os.path.relpath(os.path.join(dirpath, name), folder)] = digest
    return out


@st.composite
def mutated(draw, data):
    """``data`` replaced by random bytes, truncated, or with bits flipped."""
    kind = draw(st.sampled_from(["random", "truncate", "flip", "flip"]))
    if kind == "random":
        return draw(st.binary(max_size=2 * len(data)))
    if kind == "truncate":
        return data[: draw(st.integers(0, max(0, len(data) - 1)))]
    out = bytearray(data)
    # Headers hold most of the structure: bias half of the flips into the first
    # 512 bytes.
    for _ in range(draw(st.integers(1, 8))):
        limit = draw(st.sampled_from([min(512, len(out)), len(out)]))
        i = draw(st.integers(0, limit - 1))
        out[i] ^= 1 << draw(st.integers(0, 7))
    return bytes(out)


def check_load(folder, name, use_root):
    """Loads ``name``; only a tree or a WeightFileError naming it; no change."""
    before = snapshot(folder)
    try:
        if use_root:
            tree = load_weights(name, root=folder)
        else:
            tree = load_weights(os.path.join(folder, name))
    except WeightFileError as e:
        assert name in str(e), e
        assert e.path.endswith(name)
    else:
        assert tree is not None
    assert snapshot(folder) == before


# Hypothesis needs a fresh folder per example, not pytest's function-scoped tmp_path.
FUZZ = settings(max_examples=100, deadline=None)


@FUZZ
@given(data=st.data(), use_root=st.booleans())
def test_fuzzed_safetensors(data, use_root):
    blob = data.draw(mutated(VALID["safetensors"]["w.safetensors"]))
    with tempfile.TemporaryDirectory() as folder:
        with open(os.path.join(folder, "w.safetensors"), "wb") as f:
            f.write(blob)
        check_load(folder, "w.safetensors", use_root)


@FUZZ
@given(data=st.data(), use_root=st.booleans(), target=st.sampled_from([0, 1, 2]))
def test_fuzzed_binary(data, use_root, target):
    files = dict(VALID["binary"])
    # Mutate the data, the manifest, or both.
    for i, name in enumerate(files):
        if target in (i, 2):
            files[name] = data.draw(mutated(files[name]))
    with tempfile.TemporaryDirectory() as folder:
        for name, blob in files.items():
            with open(os.path.join(folder, name), "wb") as f:
                f.write(blob)
        check_load(folder, "w.bin", use_root)


@FUZZ
@given(data=st.data(), use_root=st.booleans())
def test_fuzzed_gguf(data, use_root):
    blob = data.draw(mutated(VALID["gguf"]["w.gguf"]))
    with tempfile.TemporaryDirectory() as folder:
        with open(os.path.join(folder, "w.gguf"), "wb") as f:
            f.write(blob)
        check_load(folder, "w.gguf", use_root)


@pytest.fixture(scope="module")
def orbax_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("orbax") / "ckpt"
    save_weights(TREE, path, format="ol_jax")
    files = sorted(
        os.path.relpath(os.path.join(d, n), path)
        for d, _, names in os.walk(path)
        for n in names
    )
    return path, files


@settings(max_examples=30, deadline=None)
@given(data=st.data(), use_root=st.booleans())
def test_fuzzed_orbax_checkpoint(orbax_checkpoint, data, use_root):
    source, files = orbax_checkpoint
    victim = data.draw(st.sampled_from(files))
    with open(source / victim, "rb") as f:
        blob = data.draw(mutated(f.read()))
    with tempfile.TemporaryDirectory() as folder:
        shutil.copytree(source, os.path.join(folder, "ckpt"))
        with open(os.path.join(folder, "ckpt", victim), "wb") as f:
            f.write(blob)
        check_load(folder, "ckpt", use_root)


def test_valid_files_load():
    """The files the fuzzers start from are valid."""
    with tempfile.TemporaryDirectory() as folder:
        for files in VALID.values():
            for name, blob in files.items():
                with open(os.path.join(folder, name), "wb") as f:
                    f.write(blob)
        assert load_weights("w.safetensors", root=folder)["enc"]["kernel"].shape == (
            2,
            3,
        )
        assert load_weights("w.bin", root=folder)["layers"][0].dtype == np.float16
        assert load_weights("w.gguf", root=folder)["model.norm.weight"].shape == (32,)
