"""A routed model: a frozen base, K frozen low-rank expert deltas, a trainable router.

The base is a one-hidden-layer MLP ``h = tanh(x W1 + b1)``, ``y = h W2 + b2``.
Expert ``k`` is a low-rank delta of the output projection,
``W2 + s A_k B_k`` (``A_k: [H, r]``, ``B_k: [r, O]``, ``s = alpha / r``), so each
expert is the base "specialised" to one task family. A small controller (routing
head) reads the base hidden state ``h`` and mixes the experts per input:

    g(x) = softmax(c(h) / T),   y(x) = h W2 + b2 + s * sum_k g_k(x) (h A_k) B_k.

Only ``params["controller"]`` is meant to be trained: build the optimizer with
``ol_jax.core.online_optimizer(..., trainable=["controller"])`` (an optax mask),
and base and expert weights never change. The functions are written for one
unbatched input; ``jax.vmap`` them over a batch.

The Llama-family variant (:func:`init_routed_llama`, :func:`routed_llama_apply`)
puts the expert deltas on the attention ``q`` / ``v`` projections of every layer
and reads the controller's input from the mean-pooled final hidden state.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from ol_jax.models._llama import (
    LLAMA_PROJECTIONS,
    Llama,
    LlamaConfig,
    LoRAConfig,
    _base_arrays,
    _forward,
    _positions_and_mask,
)

Params = dict[str, Any]

CONTROLLER = "controller"
"""Top-level key of the trainable routing head in the routed params."""


class RoutedOutput(NamedTuple):
    """What :func:`routed_mlp_apply` returns for one input.

    Attributes:
      output: ``[O]`` the mixed prediction ``y(x)``.
      route_logits: ``[K]`` controller logits ``c(h)`` (before the temperature).
      expert_outputs: ``[K, O]`` each expert's own prediction ``y_k(x)``.
    """

    output: jax.Array
    route_logits: jax.Array
    expert_outputs: jax.Array


def init_routed_mlp(
    key: jax.Array,
    *,
    d_in: int,
    d_hidden: int,
    d_out: int,
    num_experts: int,
    rank: int = 4,
    alpha: float | None = None,
    controller_hidden: int = 0,
) -> Params:
    """Random routed-MLP parameters (base, experts, controller).

    The base and experts are Lecun-normal; the controller's output layer starts at
    zero, so the initial routing is uniform.

    Args:
      key: a PRNG key.
      d_in, d_hidden, d_out: input, hidden and output widths, each ``>= 1``.
      num_experts: ``K >= 1``.
      rank: rank ``r`` of every expert delta, ``1 <= r <= min(d_hidden, d_out)``.
      alpha: delta scale numerator; ``None`` means ``alpha = r`` (scale 1).
      controller_hidden: width of a hidden tanh layer in the controller; 0 makes
        the controller linear.

    Returns:
      ``{"base": {...}, "experts": {"a": [K, H, r], "b": [K, r, O], "scale": []},
      "controller": {...}}``, all float32.

    References:
      Hu et al., `LoRA: Low-Rank Adaptation of Large Language Models
      <https://arxiv.org/abs/2106.09685>`_, 2021; Shazeer et al., `Outrageously
      Large Neural Networks: The Sparsely-Gated Mixture-of-Experts Layer
      <https://arxiv.org/abs/1701.06538>`_, 2017.
    """
    for name, value in (
        ("d_in", d_in),
        ("d_hidden", d_hidden),
        ("d_out", d_out),
        ("num_experts", num_experts),
        ("rank", rank),
    ):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if rank > min(d_hidden, d_out):
        raise ValueError(
            f"rank must be <= min(d_hidden, d_out)={min(d_hidden, d_out)}, got {rank}"
        )
    if not isinstance(controller_hidden, int) or controller_hidden < 0:
        raise ValueError(
            f"controller_hidden must be an int >= 0, got {controller_hidden!r}"
        )
    scale = float(rank if alpha is None else alpha) / rank
    k = jax.random.split(key, 6)
    init = jax.nn.initializers.lecun_normal()
    base = {
        "w1": init(k[0], (d_in, d_hidden), jnp.float32),
        "b1": jnp.zeros((d_hidden,), jnp.float32),
        "w2": init(k[1], (d_hidden, d_out), jnp.float32),
        "b2": jnp.zeros((d_out,), jnp.float32),
    }
    experts = {
        "a": jax.random.normal(k[2], (num_experts, d_hidden, rank), jnp.float32)
        / jnp.sqrt(jnp.float32(d_hidden)),
        "b": jax.random.normal(k[3], (num_experts, rank, d_out), jnp.float32)
        / jnp.sqrt(jnp.float32(rank)),
        "scale": jnp.asarray(scale, jnp.float32),
    }
    if controller_hidden:
        controller = {
            "w_h": init(k[4], (d_hidden, controller_hidden), jnp.float32),
            "b_h": jnp.zeros((controller_hidden,), jnp.float32),
            "w": jnp.zeros((controller_hidden, num_experts), jnp.float32),
            "b": jnp.zeros((num_experts,), jnp.float32),
        }
    else:
        controller = {
            "w": jnp.zeros((d_hidden, num_experts), jnp.float32),
            "b": jnp.zeros((num_experts,), jnp.float32),
        }
    return {"base": base, "experts": experts, CONTROLLER: controller}


def route_logits(controller: Params, hidden: ArrayLike) -> jax.Array:
    """Controller logits ``c(h)`` for one hidden state ``h: [H]`` -> ``[K]``."""
    h = jnp.asarray(hidden)
    if "w_h" in controller:
        h = jnp.tanh(h @ controller["w_h"] + controller["b_h"])
    return h @ controller["w"] + controller["b"]


def routed_mlp_apply(
    params: Params, x: ArrayLike, *, temperature: float = 1.0
) -> RoutedOutput:
    """The routed prediction for one input ``x: [D]``.

    ``g = softmax(c(h) / T)``; ``y = h W2 + b2 + s sum_k g_k (h A_k) B_k``. The
    experts' own predictions ``y_k = h W2 + b2 + s (h A_k) B_k`` come out too,
    so a caller can serve a single (sampled) expert.

    Args:
      params: from :func:`init_routed_mlp`.
      x: one input, ``[d_in]``.
      temperature: routing temperature ``T > 0``.

    Returns:
      A :class:`RoutedOutput`.

    References:
      Jacobs et al., `Adaptive mixtures of local experts
      <https://doi.org/10.1162/neco.1991.3.1.79>`_, Neural Computation 1991.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    x = jnp.asarray(x)
    base, experts = params["base"], params["experts"]
    if x.ndim != 1 or x.shape[0] != base["w1"].shape[0]:
        raise ValueError(
            f"x must have shape ({base['w1'].shape[0]},) (one unbatched input), "
            f"got {x.shape}"
        )
    x = x.astype(base["w1"].dtype)
    h = jnp.tanh(x @ base["w1"] + base["b1"])
    y_base = h @ base["w2"] + base["b2"]
    # [K, O]: each expert's delta on this input, through its rank-r bottleneck.
    deltas = experts["scale"] * jnp.einsum(
        "h,khr,kro->ko", h, experts["a"], experts["b"]
    )
    logits = route_logits(params[CONTROLLER], h)
    g = jax.nn.softmax(logits / jnp.asarray(temperature, logits.dtype))
    output = y_base + g @ deltas
    return RoutedOutput(
        output=output, route_logits=logits, expert_outputs=y_base[None, :] + deltas
    )


# ----------------------------------------------------------------- Llama family


class RoutedLlamaOutput(NamedTuple):
    """What :func:`routed_llama_apply` returns for one sequence.

    Attributes:
      logits: ``[T, vocab]`` float32 logits of the routed model.
      route_logits: ``[K]`` controller logits on the pooled base hidden state.
    """

    logits: jax.Array
    route_logits: jax.Array


def llama_base_params(model: Llama) -> Params:
    """A ``Llama``'s base weights as the plain nested dict the routed model reads.

    ``{"embed_tokens", "layers": {name: [L, ...]}, "norm", "lm_head"}``; LoRA
    adapters of the model, if any, are not included.
    """
    return _base_arrays(model)


def init_routed_llama(
    key: jax.Array,
    config: LlamaConfig,
    base: Params,
    *,
    num_experts: int,
    rank: int = 4,
    alpha: float | None = None,
    targets: tuple[str, ...] = ("q_proj", "v_proj"),
    controller_hidden: int = 0,
    expert_std: float = 0.02,
) -> Params:
    """Routed Llama parameters: a frozen base, K low-rank experts on ``targets``.

    Expert ``k`` adds ``s A_k B_k`` (``s = alpha / r``) to every layer's
    projections in ``targets`` (by default ``q_proj`` and ``v_proj``); the
    controller reads the mean-pooled final hidden state of the base model.

    Args:
      key: PRNG key for the expert and controller weights.
      config: the Llama architecture.
      base: the base weights, :func:`llama_base_params` (kept as given).
      num_experts: ``K >= 1``.
      rank: rank ``r`` of each expert delta.
      alpha: delta scale numerator; ``None`` means ``alpha = r``.
      targets: projections that get expert deltas.
      controller_hidden: width of a hidden tanh layer in the controller (0: linear).
      expert_std: standard deviation of the random expert ``A`` and ``B``.

    Returns:
      ``{"base": base, "experts": {name: {"a": [K, L, in, r], "b": [K, L, r, out]},
      "scale": []}, "controller": {...}}``.

    References:
      Hu et al., `LoRA: Low-Rank Adaptation of Large Language Models
      <https://arxiv.org/abs/2106.09685>`_, 2021; Huang et al., `LoraHub: Efficient
      Cross-Task Generalization via Dynamic LoRA Composition
      <https://arxiv.org/abs/2307.13269>`_, 2023.
    """
    if not isinstance(num_experts, int) or num_experts < 1:
        raise ValueError(f"num_experts must be an int >= 1, got {num_experts!r}")
    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be an int >= 1, got {rank!r}")
    for name in targets:
        if name not in LLAMA_PROJECTIONS:
            raise ValueError(
                f"targets must name Llama projections {list(LLAMA_PROJECTIONS)}, "
                f"got {name!r}"
            )
    layers = base["layers"]
    n_layers = config.num_hidden_layers
    keys = jax.random.split(key, 2 * len(targets) + 1)
    experts: dict[str, Any] = {}
    for i, name in enumerate(targets):
        fan_in, fan_out = layers[name].shape[-2:]
        experts[name] = {
            "a": expert_std
            * jax.random.normal(
                keys[2 * i], (num_experts, n_layers, fan_in, rank), jnp.float32
            ),
            "b": expert_std
            * jax.random.normal(
                keys[2 * i + 1], (num_experts, n_layers, rank, fan_out), jnp.float32
            ),
        }
    experts["scale"] = jnp.asarray(float(rank if alpha is None else alpha) / rank)
    d = config.hidden_size
    init = jax.nn.initializers.lecun_normal()
    if controller_hidden:
        controller = {
            "w_h": init(keys[-1], (d, controller_hidden), jnp.float32),
            "b_h": jnp.zeros((controller_hidden,), jnp.float32),
            "w": jnp.zeros((controller_hidden, num_experts), jnp.float32),
            "b": jnp.zeros((num_experts,), jnp.float32),
        }
    else:
        controller = {
            "w": jnp.zeros((d, num_experts), jnp.float32),
            "b": jnp.zeros((num_experts,), jnp.float32),
        }
    return {"base": base, "experts": experts, CONTROLLER: controller}


def routed_llama_apply(
    config: LlamaConfig,
    params: Params,
    tokens: ArrayLike,
    *,
    attention_mask: ArrayLike | None = None,
    temperature: float = 1.0,
) -> RoutedLlamaOutput:
    """Routed Llama logits for one token sequence ``[T]``.

    Two passes: the base model (no deltas) gives the final hidden states, whose
    mean over real tokens ``h_bar`` feeds the controller,
    ``g = softmax(c(h_bar) / T)``; then the model runs with every target
    projection ``W + s sum_k g_k A_k B_k``. The mixture is one LoRA of rank
    ``K r`` whose ``B`` rows of expert ``k`` are scaled by ``g_k``, so the second
    pass costs what a single adapter does. ``jax.vmap`` it over a batch.

    Args:
      config: the Llama architecture.
      params: from :func:`init_routed_llama`.
      tokens: int ids ``[T]``.
      attention_mask: optional ``[T]`` bool mask (true = real token).
      temperature: routing temperature ``> 0``.

    Returns:
      A :class:`RoutedLlamaOutput`.

    References:
      Huang et al., `LoraHub: Efficient Cross-Task Generalization via Dynamic
      LoRA Composition <https://arxiv.org/abs/2307.13269>`_, 2023.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    tokens = jnp.asarray(tokens)
    if tokens.ndim != 1:
        raise ValueError(
            f"tokens must have shape [T] (one sequence), got {tokens.shape}"
        )
    mask_in = None if attention_mask is None else jnp.asarray(attention_mask)[None]
    positions, mask = _positions_and_mask(tokens[None], None, mask_in)
    base = params["base"]
    experts = params["experts"]
    d = config.hidden_size
    # The final normed hidden states come out of the unchanged forward pass when
    # the output head is the identity.
    as_hidden = {**base, "lm_head": jnp.eye(d, dtype=base["norm"].dtype)}
    hidden, _ = _forward(config, None, as_hidden, {}, tokens[None], positions, mask)
    m = mask[0].astype(hidden.dtype)[:, None]
    pooled = jnp.sum(hidden[0] * m, axis=0) / jnp.maximum(jnp.sum(m), 1.0)
    logits_route = route_logits(params[CONTROLLER], pooled.astype(jnp.float32))
    g = jax.nn.softmax(logits_route / jnp.asarray(temperature, jnp.float32))
    names = tuple(k for k in experts if k != "scale")
    mixed = {}
    k_experts = g.shape[0]
    for name in names:
        a, b = experts[name]["a"], experts[name]["b"]
        _, n_layers, fan_in, r = a.shape
        fan_out = b.shape[-1]
        a_cat = jnp.transpose(a, (1, 2, 0, 3)).reshape(n_layers, fan_in, k_experts * r)
        b_scaled = b * g.astype(b.dtype)[:, None, None, None]
        b_cat = jnp.transpose(b_scaled, (1, 0, 2, 3)).reshape(
            n_layers, k_experts * r, fan_out
        )
        mixed[name] = (a_cat, b_cat)
    rank = experts[names[0]]["a"].shape[-1] * k_experts
    # LoRAConfig's scale is alpha / rank; the experts' scale s is a traced value,
    # so fold it into B and use scale 1.
    lora_config = LoRAConfig(rank=rank, alpha=float(rank), target_modules=names)
    mixed = {
        n: (a, b * jnp.asarray(experts["scale"]).astype(b.dtype))
        for n, (a, b) in mixed.items()
    }
    logits, _ = _forward(
        config, lora_config, base, mixed, tokens[None], positions, mask
    )
    return RoutedLlamaOutput(logits=logits[0], route_logits=logits_route)
