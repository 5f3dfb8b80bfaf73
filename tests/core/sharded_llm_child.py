"""A LoRA step on a tiny Llama, on one device, on a mesh, or across processes.

Run by tests/core/test_sharding.py in child processes (the device count and
``jax.distributed`` must be set before JAX starts):

* ``mesh8 OUT``: 8 host devices (``XLA_FLAGS``), the single-network step and the
  addressed multi-adapter step each on a 4 (data) x 2 (model) mesh with the base
  FSDP-sharded, compared with the same steps on one device; writes ``OUT``.
* ``run OUT PROCESS_ID NUM_PROCESSES PORT``: ``NUM_PROCESSES`` > 1 joins
  ``jax.distributed`` on ``127.0.0.1:PORT`` (gloo CPU collectives) with 2 host
  devices per process; the process feeds only its own rows of the batch to the
  data-parallel step on a (data = processes) x (model = 2) mesh and saves the
  final adapter to ``OUT`` (``.npz``). ``NUM_PROCESSES`` 1 is the reference.
"""

import os
import sys

import numpy as np

ROWS, SEQ, STEPS = 8, 10, 3


def _setup():
    import jax
    import jax.numpy as jnp
    import optax

    from ol_jax.core import init_state
    from ol_jax.models import Llama, LlamaConfig, LoRAConfig, llama_apply, split_lora
    from ol_jax.objectives import token_cross_entropy, token_kl

    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    model = Llama(config, lora_config=LoRAConfig(rank=2), key=jax.random.key(0))
    graphdef, base, lora = split_lora(model)
    lora = jax.tree.map(
        lambda x: x + 0.1 * jax.random.normal(jax.random.key(1), x.shape), lora
    )

    def turn_loss(lora, turn, *, frozen, extras, key):
        del extras, key
        inputs, targets = turn["tokens"][:-1], turn["tokens"][1:]
        base_logits = llama_apply(graphdef, lora, inputs, frozen=frozen, use_lora=False)
        logits = llama_apply(graphdef, lora, inputs, frozen=frozen)
        return token_cross_entropy(logits, targets) + token_kl(
            jax.lax.stop_gradient(base_logits), logits
        )

    def batch_loss(lora, batch, *, frozen, extras, key):
        """The data-parallel loss: the mean turn loss over the batch's rows."""
        per_row = jax.vmap(
            lambda t: turn_loss(lora, t, frozen=frozen, extras=extras, key=key)
        )(batch)
        return jnp.mean(per_row)

    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.1, momentum=0.9))
    state = init_state(lora, tx, key=jax.random.key(2))
    batches = [
        {"tokens": jax.random.randint(jax.random.key(10 + s), (ROWS, SEQ), 0, 64)}
        for s in range(STEPS)
    ]
    return base, state, tx, turn_loss, batch_loss, batches


def _params(state):
    import jax

    # Replicated parameters: every process reads its own (complete) copy.
    leaves = jax.tree.leaves(state.params)
    return {
        f"p{i}": np.asarray(x.addressable_shards[0].data) for i, x in enumerate(leaves)
    }


def mesh8(out):
    import jax
    import jax.numpy as jnp

    from ol_jax.core import (
        device_mesh,
        distribute,
        fsdp_shardings,
        keep_state_sharding,
        make_addressed_step,
        make_step,
        replicated,
        shard_batch,
        stack_states,
    )

    assert jax.device_count() == 8, jax.devices()
    base, state, tx, turn_loss, batch_loss, batches = _setup()
    mesh = device_mesh(4, 2)
    frozen_s = distribute(base, fsdp_shardings(base, mesh))
    kernel = frozen_s["layers"]["gate_proj"]["kernel"]
    assert kernel.addressable_shards[0].data.shape == (2, 32, 32), kernel.sharding
    step = make_step(batch_loss, tx, donate=False)
    state_s = replicated(state, mesh)
    sharded_step = keep_state_sharding(make_step(batch_loss, tx, jit=False), state_s)
    ref, sharded = state, distribute(state, state_s)
    for batch in batches:
        ref, _ = step(ref, batch, base)
        sharded, metrics = sharded_step(sharded, shard_batch(batch, mesh), frozen_s)
    assert len(metrics["loss"].sharding.device_set) == 8
    # The state comes back placed as it went in (so the next call reuses the
    # program), though the compiler, left alone, would split A like the base.
    assert all(x.sharding.is_fully_replicated for x in jax.tree.leaves(sharded))
    worst = max(
        float(jnp.max(jnp.abs(a - b)))
        for a, b in zip(
            jax.tree.leaves(sharded.params), jax.tree.leaves(ref.params), strict=True
        )
    )
    # The multi-adapter step: 4 adapters, rows split over data, base over model.
    stacked = stack_states([state] * 4)
    multi = make_addressed_step(turn_loss, tx)
    ids = jnp.asarray([3, 0, 1, 3, 2, -1, 0, 1], jnp.int32)
    multi_ref, _ = multi(stacked, batches[0], ids, base)
    stacked_s = replicated(stacked, mesh)
    multi_sharded = keep_state_sharding(
        make_addressed_step(turn_loss, tx, jit=False), stacked_s
    )
    multi_s, _ = multi_sharded(
        distribute(stacked, stacked_s),
        shard_batch(batches[0], mesh),
        shard_batch(ids, mesh),
        frozen_s,
    )
    worst_multi = max(
        float(jnp.max(jnp.abs(a - b)))
        for a, b in zip(
            jax.tree.leaves(multi_s.params),
            jax.tree.leaves(multi_ref.params),
            strict=True,
        )
    )
    with open(out, "w") as f:
        f.write(f"{worst} {worst_multi}\n")


def run(out, process_id, num_processes, port):
    import jax

    if num_processes > 1:
        jax.distributed.initialize(
            coordinator_address=f"127.0.0.1:{port}",
            num_processes=num_processes,
            process_id=process_id,
        )
    from ol_jax.core import (
        device_mesh,
        distribute,
        fsdp_shardings,
        keep_state_sharding,
        make_step,
        replicated,
        shard_batch,
    )

    assert jax.process_count() == num_processes
    base, state, tx, _, batch_loss, batches = _setup()
    step = make_step(batch_loss, tx, donate=False)
    if num_processes == 1:  # the reference: one device, no mesh
        for batch in batches:
            state, _ = step(state, batch, base)
        np.savez(out, **_params(state))
        return
    mesh = device_mesh(num_processes, 2)
    frozen = distribute(base, fsdp_shardings(base, mesh))
    state_s = replicated(state, mesh)
    state = distribute(state, state_s)
    step = keep_state_sharding(make_step(batch_loss, tx, jit=False), state_s)
    per = ROWS // num_processes
    for batch in batches:
        mine = jax.tree.map(
            lambda x: np.asarray(x)[process_id * per : (process_id + 1) * per], batch
        )
        state, _ = step(state, shard_batch(mine, mesh), frozen)
    np.savez(out, **_params(state))
    steps = int(state.step.addressable_shards[0].data)
    print(f"process {process_id}/{num_processes} done after {steps} steps")
    jax.distributed.shutdown()


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "mesh8":
        mesh8(sys.argv[2])
    else:
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
        import jax

        jax.config.update("jax_num_cpu_devices", 2)
        run(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
