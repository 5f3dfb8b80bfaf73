"""Weight formats: bit-exact round trips, dtype conversion, GGUF read, errors."""

import json
import os

import gguf
import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file

import ol_jax.store  # noqa: F401  (registers the "ol_jax" Orbax format)
from ol_jax.models import (
    FLOAT_DTYPES,
    convert_dtype,
    load_weights,
    save_weights,
    weight_formats,
)

BF16 = np.dtype(ml_dtypes.bfloat16)
WRITABLE = {"safetensors": "w.safetensors", "binary": "w.bin", "ol_jax": "w.orbax"}


def random_tree(seed, dtype, shapes=((3, 4), (5,), ())):
    rng = np.random.default_rng(seed)
    leaf = lambda shape: (rng.standard_normal(shape) * 3).astype(dtype)
    return {
        "encoder": {"kernel": leaf(shapes[0]), "bias": leaf(shapes[1])},
        "layers": [leaf(shapes[1]), {"scale": leaf(shapes[2])}],
        "head": (leaf(shapes[0]),),
        "blocks": {0: {"w": leaf(shapes[1])}, 1: {"w": leaf(shapes[1])}},
    }


def flat(tree, prefix=""):
    """``{path: leaf}`` through dicts, lists and tuples (for comparisons)."""
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, (list, tuple)):
        items = enumerate(tree)
    else:
        return {prefix: tree}
    out = {}
    for k, v in items:
        out.update(flat(v, f"{prefix}/{k}"))
    return out


def assert_bit_exact(a, b):
    fa, fb = flat(a), flat(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        x, y = np.asarray(fa[k]), np.asarray(fb[k])
        assert x.dtype == y.dtype, k
        assert x.shape == y.shape, k
        assert x.tobytes() == y.tobytes(), k


@pytest.mark.parametrize("fmt", sorted(WRITABLE))
@pytest.mark.parametrize("dtype", sorted(FLOAT_DTYPES))
def test_round_trip_bit_exact(tmp_path, fmt, dtype):
    tree = random_tree(0, FLOAT_DTYPES[dtype])
    # Special values must survive too.
    tree["encoder"]["bias"][:3] = [np.inf, -0.0, np.nan]
    path = tmp_path / WRITABLE[fmt]
    save_weights(tree, path, format=fmt)
    loaded = load_weights(path, format=fmt)
    # Leaves are compared by path (Orbax restores a tuple as a list).
    assert_bit_exact(flat(tree), flat(loaded))
    if fmt != "ol_jax":
        assert isinstance(loaded["head"], tuple)
        assert sorted(loaded["blocks"]) == [0, 1]


@settings(max_examples=8)
@given(
    seed=st.integers(0, 2**16),
    dtype=st.sampled_from(sorted(FLOAT_DTYPES)),
    rows=st.integers(1, 5),
    cols=st.integers(1, 5),
)
def test_round_trip_property(tmp_path_factory, seed, dtype, rows, cols):
    tree = random_tree(seed, FLOAT_DTYPES[dtype], ((rows, cols), (cols,), (rows,)))
    before = {k: v.copy() for k, v in flat(tree).items()}
    folder = tmp_path_factory.mktemp("rt")
    for fmt in ("safetensors", "binary"):
        path = folder / WRITABLE[fmt]
        save_weights(tree, path)  # format from the suffix
        assert_bit_exact(tree, load_weights(path))
    assert_bit_exact(flat(tree), before)  # the input is not mutated


def test_format_inferred_from_suffix_and_folder(tmp_path):
    tree = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    save_weights(tree, tmp_path / "a.orbax")
    os.rename(tmp_path / "a.orbax", tmp_path / "checkpoint")
    # A folder without a known suffix is detected as an Orbax checkpoint.
    assert_bit_exact(tree, load_weights(tmp_path / "checkpoint"))
    # "custom" is an alias of the Orbax format, as in the document's tool.
    save_weights(tree, tmp_path / "c", format="custom")
    assert_bit_exact(tree, load_weights(tmp_path / "c", format="custom"))


def test_flat_hf_names_round_trip(tmp_path):
    tree = {
        "model.embed_tokens.weight": np.ones((4, 2), np.float32),
        "model.layers.0.mlp.up_proj.weight": np.zeros((3, 2), np.float32),
    }
    save_weights(tree, tmp_path / "m.safetensors")
    loaded = load_weights(tmp_path / "m.safetensors")
    assert sorted(loaded) == sorted(tree)
    assert_bit_exact(tree, loaded)


def test_foreign_safetensors_load_flat(tmp_path):
    tensors = {"a.b": np.ones((2,), np.float32), "c": np.zeros((1, 2), BF16)}
    save_file(tensors, str(tmp_path / "x.safetensors"))
    assert_bit_exact(tensors, load_weights(tmp_path / "x.safetensors"))


def test_like_restructures_and_checks_shapes(tmp_path):
    tree = random_tree(1, np.float32)
    save_weights(tree, tmp_path / "w.safetensors")
    like = {"encoder": {"kernel": np.zeros((3, 4), np.float32)}}
    got = load_weights(tmp_path / "w.safetensors", like=like)
    assert_bit_exact(got, {"encoder": {"kernel": tree["encoder"]["kernel"]}})
    with pytest.raises(ValueError, match="shape"):
        load_weights(
            tmp_path / "w.safetensors",
            like={"encoder": {"kernel": np.zeros((4, 3), np.float32)}},
        )
    with pytest.raises(ValueError, match="no tensor 'missing'"):
        load_weights(tmp_path / "w.safetensors", like={"missing": np.zeros(1)})


# ------------------------------------------------------------------ dtypes


def test_f32_to_bf16_is_lossy_and_refused(tmp_path):
    tree = random_tree(2, np.float32)
    with pytest.raises(ValueError, match="lossy.*allow_lossy=True"):
        convert_dtype(tree, "bf16")
    with pytest.raises(ValueError, match="from float32 to bfloat16 is lossy"):
        save_weights(tree, tmp_path / "w.safetensors", dtype="bfloat16")
    assert not (tmp_path / "w.safetensors").exists()
    low = convert_dtype(tree, "bfloat16", allow_lossy=True)
    back = convert_dtype(low, "float32")  # widening is always exact
    k = "/encoder/kernel"
    assert flat(low)[k].dtype == BF16 and flat(back)[k].dtype == np.float32
    assert not np.array_equal(flat(back)[k], flat(tree)[k])
    np.testing.assert_allclose(flat(back)[k], flat(tree)[k], rtol=1e-2)


def test_exactly_representable_values_convert_without_flag():
    tree = {"w": np.float32([0.5, -2.0, 0.0, 1024.0, np.inf, np.nan]), "n": np.int32(3)}
    for dtype in ("float16", "bfloat16"):
        out = convert_dtype(tree, dtype)
        assert out["w"].dtype == FLOAT_DTYPES[dtype]
        assert out["n"].dtype == np.int32  # integer leaves are left alone
        np.testing.assert_array_equal(out["w"].astype(np.float32), tree["w"])


def test_f16_overflow_is_lossy():
    with pytest.raises(ValueError, match="1 of 2 values change"):
        convert_dtype({"w": np.float32([1.0, 1e6])}, "f16")


@settings(max_examples=15)
@given(
    values=st.lists(
        st.floats(-1e4, 1e4, allow_nan=False, width=16), min_size=1, max_size=8
    ),
    src=st.sampled_from(["float16", "bfloat16"]),
)
def test_widening_round_trip_exact(values, src):
    x = np.asarray(values, np.float32).astype(FLOAT_DTYPES[src])
    wide = convert_dtype({"x": x}, "float32")["x"]
    assert wide.dtype == np.float32
    assert convert_dtype({"x": wide}, src)["x"].tobytes() == x.tobytes()


def test_load_with_dtype(tmp_path):
    tree = {"w": np.float32([0.25, 3.0])}
    save_weights(tree, tmp_path / "w.bin")
    got = load_weights(tmp_path / "w.bin", dtype="bf16")
    assert got["w"].dtype == BF16
    with pytest.raises(ValueError, match="dtype must be one of"):
        load_weights(tmp_path / "w.bin", dtype="int8")


# ------------------------------------------------------------------ binary


def test_binary_layout_is_raw_float32(tmp_path):
    tree = {"a": np.float32([[1, 2], [3, 4]]), "b": np.float16([5.5])}
    save_weights(tree, tmp_path / "w.bin")
    raw = np.fromfile(tmp_path / "w.bin", dtype="<f4")
    np.testing.assert_array_equal(raw, [1, 2, 3, 4, 5.5])
    manifest = json.loads((tmp_path / "w.bin.json").read_text())
    assert [t["name"] for t in manifest["tensors"]] == ["a", "b"]
    assert manifest["tensors"][1] == {
        "name": "b",
        "shape": [1],
        "dtype": "float16",
        "offset": 16,
    }


def test_binary_errors(tmp_path):
    tree = {"a": np.float32([1, 2, 3])}
    save_weights(tree, tmp_path / "w.bin")
    with open(tmp_path / "w.bin", "r+b") as f:
        f.truncate(8)
    with pytest.raises(ValueError, match="truncated"):
        load_weights(tmp_path / "w.bin")
    os.remove(tmp_path / "w.bin.json")
    with pytest.raises(ValueError, match="manifest"):
        load_weights(tmp_path / "w.bin")
    with pytest.raises(ValueError, match="int32"):
        save_weights({"i": np.int32([1])}, tmp_path / "i.bin")


# ------------------------------------------------------------------ gguf


def test_gguf_read(tmp_path):
    rng = np.random.default_rng(0)
    d, heads, inter, vocab = 8, 2, 16, 12
    sd = {
        "model.embed_tokens.weight": rng.standard_normal((vocab, d)),
        "model.norm.weight": rng.standard_normal((d,)),
        "lm_head.weight": rng.standard_normal((vocab, d)),
    }
    names = {
        "self_attn.q_proj": ("attn_q", (d, d)),
        "self_attn.k_proj": ("attn_k", (d, d)),
        "self_attn.v_proj": ("attn_v", (d, d)),
        "self_attn.o_proj": ("attn_output", (d, d)),
        "mlp.gate_proj": ("ffn_gate", (inter, d)),
        "mlp.up_proj": ("ffn_up", (inter, d)),
        "mlp.down_proj": ("ffn_down", (d, inter)),
        "input_layernorm": ("attn_norm", (d,)),
        "post_attention_layernorm": ("ffn_norm", (d,)),
    }
    for hf, (_, shape) in names.items():
        sd[f"model.layers.0.{hf}.weight"] = rng.standard_normal(shape)
    sd = {k: v.astype(np.float32) for k, v in sd.items()}
    w = gguf.GGUFWriter(str(tmp_path / "t.gguf"), "llama")
    w.add_block_count(1)
    w.add_context_length(64)
    w.add_embedding_length(d)
    w.add_feed_forward_length(inter)
    w.add_head_count(heads)
    w.add_head_count_kv(heads)
    w.add_layer_norm_rms_eps(1e-5)
    gg = {"model.embed_tokens.weight": "token_embd.weight"}
    gg |= {"model.norm.weight": "output_norm.weight", "lm_head.weight": "output.weight"}
    for hf, (g, _) in names.items():
        gg[f"model.layers.0.{hf}.weight"] = f"blk.0.{g}.weight"
    for hf, value in sd.items():
        if ".q_proj." in hf or ".k_proj." in hf:  # llama.cpp's rotary permutation
            value = (
                value.reshape(heads, 2, d // heads // 2, d).swapaxes(1, 2).reshape(d, d)
            )
        w.add_tensor(gg[hf], np.ascontiguousarray(value))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    loaded = load_weights(tmp_path / "t.gguf")
    assert_bit_exact(sd, loaded)
    with pytest.raises(ValueError, match="read-only"):
        save_weights(sd, tmp_path / "out.gguf")


# ------------------------------------------------------------------ errors


def test_errors(tmp_path):
    tree = {"w": np.ones(2, np.float32)}
    with pytest.raises(ValueError, match="format must be one of"):
        save_weights(tree, tmp_path / "w.x", format="pickle")
    with pytest.raises(ValueError, match="cannot tell the weight format"):
        save_weights(tree, tmp_path / "w.unknown")
    with pytest.raises(ValueError, match="does not exist"):
        load_weights(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="folder of"):
        save_weights(tree, tmp_path / "no" / "such" / "w.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="could not read safetensors"):
        load_weights(tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match="nested dicts"):
        save_weights({"w": "text"}, tmp_path / "w.safetensors")
    with pytest.raises(ValueError, match="share the name"):
        save_weights({"a.b": tree["w"], "a": {"b": tree["w"]}}, tmp_path / "d.bin")
    assert weight_formats()["gguf"] == {"read": True, "write": False}
    assert weight_formats()["ol_jax"] == {"read": True, "write": True}
