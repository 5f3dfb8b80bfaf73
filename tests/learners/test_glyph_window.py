"""Property test of the glyph learner's feedback ring buffer."""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ol_jax.learners._glyph_loss import empty_window, insert_feedback
from ol_jax.models import GlyphConfig

MODEL = GlyphConfig(style_z_dim=3, image_size=2, hidden=(4, 5, 6))
_INSERT = jax.jit(insert_feedback)


def _reference(window, batch, time):
    """Row by row, in order: each valid row overwrites the slot at the cursor."""
    out = {k: np.array(v) for k, v in window.items()}
    size = out["valid"].shape[0]
    for i in np.flatnonzero(batch["valid"]):
        slot = int(out["cursor"])
        for name in ("z", "head", "image", "reward"):
            out[name][slot] = batch[name][i]
        out["time"][slot], out["valid"][slot] = time, True
        out["cursor"] = np.int32((slot + 1) % size)
    return out


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(1, 6),
    cursor=st.integers(0, 5),
    valid=st.lists(st.booleans(), min_size=1, max_size=9),
    seed=st.integers(0, 2**16),
)
def test_insert_feedback_equals_writing_rows_in_order(size, cursor, valid, seed):
    rng = np.random.default_rng(seed)
    n = len(valid)
    window = empty_window(size, MODEL, stage=3)
    window = {
        k: jnp.asarray(rng.standard_normal(v.shape).astype(v.dtype))
        if v.dtype == jnp.float32
        else v
        for k, v in window.items()
    }
    window["cursor"] = jnp.int32(cursor % size)
    batch = {
        "z": rng.standard_normal((n, 3)).astype(np.float32),
        "head": rng.standard_normal((n, 6)).astype(np.float32),
        "image": rng.random((n, 2, 2)).astype(np.float32),
        "reward": rng.standard_normal(n).astype(np.float32),
        "valid": np.asarray(valid),
    }
    got = _INSERT(window, batch, jnp.int32(7))
    want = _reference(window, batch, 7)
    for name in want:
        np.testing.assert_array_equal(np.asarray(got[name]), want[name], err_msg=name)
