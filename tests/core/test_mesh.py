"""The same ``step`` under a ``jax.sharding.Mesh`` of 8 host CPU devices."""

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from ol_jax.core import init_state, make_step, online_optimizer

    assert jax.device_count() == 8, jax.devices()

    def loss(params, batch, *, frozen, extras, key):
        pred = jnp.tanh(batch["x"] @ frozen["proj"]) @ params["w"] + params["b"]
        return jnp.mean((pred - batch["y"]) ** 2)

    rng = np.random.default_rng(0)
    frozen = {"proj": jnp.asarray(rng.normal(size=(8, 16)), jnp.float32)}
    params = {"w": jnp.zeros(16), "b": jnp.zeros(())}
    batch = {"x": jnp.asarray(rng.normal(size=(32, 8)), jnp.float32),
             "y": jnp.asarray(rng.normal(size=32), jnp.float32)}
    tx = online_optimizer(0.05)
    step = make_step(loss, tx, donate=False)

    ref = init_state(params, tx, key=jax.random.key(0))
    for _ in range(3):
        ref, _ = step(ref, batch, frozen)

    mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "model"))
    shard = lambda spec: NamedSharding(mesh, spec)
    batch_s = {"x": jax.device_put(batch["x"], shard(P("data", None))),
               "y": jax.device_put(batch["y"], shard(P("data")))}
    frozen_s = {"proj": jax.device_put(frozen["proj"], shard(P(None, "model")))}
    state = jax.device_put(init_state(params, tx, key=jax.random.key(0)), shard(P()))
    for _ in range(3):
        state, m = step(state, batch_s, frozen_s)
    assert len(batch_s["x"].sharding.device_set) == 8
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 state.params, ref.params)
    print("MESH_OK", float(m["loss"]))
    """
)


def test_step_under_8_device_mesh_equals_single_device():
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    env["JAX_PLATFORMS"] = "cpu"
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "MESH_OK" in out.stdout
