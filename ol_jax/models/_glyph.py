"""Glyph decoder and diagonal Gaussian style policy for the glyph style learner.

A glyph is drawn from a style latent ``z`` by a small coordinate network (a CPPN):
``z`` is mapped by an MLP to a modulation vector ``m``; every pixel's coordinates
``(x, y, r)`` are mixed with ``m`` and passed through a per-pixel MLP to a scalar
field ``f(x, y)``; the stroke is the neighbourhood of the field's zero level set,

    image(x, y) = exp(-(kappa * (f(x, y) - mean f))^2),

a Gaussian stroke profile with values in (0, 1]. Centring the field guarantees that
its zero level set crosses the canvas, so even an untrained decoder draws a varied,
letter-like curve for every ``z`` instead of a blank or a flat grey canvas.

The five layers are ``decoder.0`` .. ``decoder.4`` (0, 1: the ``z`` MLP; 2: mixes
``m`` with the coordinates; 3, 4: per-pixel layers to the field), so a
``finetune_layers: ["decoder.3", "decoder.4"]`` config selects the last two by
dotted path prefix.

The pure functional form used with :func:`ol_jax.core.make_step` is a plain dict::

    params = init_glyph(GlyphConfig(), key=key)
    # {"policy": {"mean": [D], "log_std": [D]},
    #  "decoder": {"0": {"kernel", "bias"}, ..., "4": {"kernel", "bias"}}}
    z = sample_style_z(params["policy"], key=key, n=8)  # [8, D]
    images = jax.vmap(decode_glyph, in_axes=(None, 0))(params["decoder"], z)

Its leaf paths, joined with ``"."`` from ``jax.tree_util.tree_flatten_with_path``
(:func:`ol_jax.core.path_str`), read ``policy.log_std``, ``policy.mean``,
``decoder.0.bias``, ``decoder.0.kernel``, ..., ``decoder.4.kernel``; the NNX module's
``nnx.split`` state has the same ``decoder.<i>.<kernel|bias>`` paths.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from ol_jax.objectives import (
    DEFAULT_MAX_LOG_STD,
    DEFAULT_MIN_LOG_STD,
    gaussian_log_prob,
)

Params = dict[str, Any]

NUM_DECODER_LAYERS = 5


@dataclasses.dataclass(frozen=True)
class GlyphConfig:
    """Static shape and drawing settings of a glyph network.

    Attributes:
      style_z_dim: dimension ``D`` of the style latent.
      image_size: side ``S`` of the square glyph image.
      hidden: widths ``(H0, H1, H2)``: the two ``z`` MLP layers and the per-pixel
        width.
      coord_scale: multiplies the pixel coordinates in ``[-1, 1]`` before
        ``decoder.2``; larger values draw curvier strokes.
      stroke_sharpness: ``kappa`` of the stroke profile; larger values draw
        thinner strokes.
    """

    style_z_dim: int = 64
    image_size: int = 32
    hidden: tuple[int, int, int] = (128, 256, 32)
    coord_scale: float = 6.0
    stroke_sharpness: float = 10.0

    def __post_init__(self):
        # Sizes become array shapes: a float (or a bool) here would surface as an
        # opaque XLA error at the first trace. (Their upper bounds are the
        # config's: ``ol_jax.store.ModelConfig``.)
        if not isinstance(self.hidden, tuple | list):
            raise ValueError(f"hidden must be three widths, got {self.hidden!r}")
        sizes = {"style_z_dim": self.style_z_dim, "image_size": self.image_size}
        sizes |= {f"hidden[{i}]": h for i, h in enumerate(self.hidden)}
        for name, value in sizes.items():
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an int, got {value!r}")
        if self.style_z_dim < 1:
            raise ValueError(f"style_z_dim must be >= 1, got {self.style_z_dim}")
        if self.image_size < 2:
            raise ValueError(f"image_size must be >= 2, got {self.image_size}")
        if len(self.hidden) != 3 or min(self.hidden) < 1:
            raise ValueError(
                f"hidden must be three positive widths (H0, H1, H2), got {self.hidden}"
            )
        if not self.coord_scale > 0 or not self.stroke_sharpness > 0:
            raise ValueError(
                "coord_scale and stroke_sharpness must be > 0, got "
                f"{self.coord_scale} and {self.stroke_sharpness}"
            )


# Initial kernel scales (variance_scaling, fan_in). The z MLP keeps unit gain; the
# per-pixel layer 3 gets a larger gain so that the field has several bends (a
# glyph, not a straight edge). All initial weights stay far inside [-5, 5].
_GAINS = (1.0, 1.0, 1.0, 6.0, 1.0)


def _coordinates(image_size: int, coord_scale: float) -> jax.Array:
    """Pixel features ``coord_scale * (x, y, r)`` on a ``[-1, 1]^2`` grid, [S*S, 3]."""
    t = jnp.linspace(-1.0, 1.0, image_size, dtype=jnp.float32)
    y, x = jnp.meshgrid(t, t, indexing="ij")
    r = jnp.sqrt(x * x + y * y)
    return (coord_scale * jnp.stack([x, y, r], axis=-1)).reshape(-1, 3)


# Stages of the decoder: the value computed from ``z`` alone before ``decoder.<k>``
# (``k = 0..3``). Stage 3 is the ``z`` part of layer 2's pre-activation; the pixel
# part ``coords @ W2[H1:]`` is added per pixel after it.
NUM_STAGES = 4


def _dense(layer: Params, h: jax.Array) -> jax.Array:
    bias = layer["bias"]
    return h @ layer["kernel"] + bias.reshape((1,) * (h.ndim - 1) + (-1,))


def _head(layers: Params, z: jax.Array, stage: int) -> jax.Array:
    """The decoder from ``z [..., D]`` up to ``stage`` (see :func:`glyph_stage`)."""
    h = z
    for i in range(min(stage, 2)):
        h = jnp.tanh(_dense(layers[str(i)], h))
    if stage == 3:
        h1 = h.shape[-1]
        k2 = layers["2"]["kernel"][:h1]
        h = h @ k2 + layers["2"]["bias"].reshape((1,) * (h.ndim - 1) + (-1,))
    return h


def _tail(layers: Params, h: jax.Array, config: GlyphConfig, stage: int) -> jax.Array:
    """The decoder from stage ``stage`` values ``h [..., d]`` to images [..., S, S].

    Any leading axes are batch axes: the per-pixel layers then run as one matrix
    product over every pixel of every glyph.
    """
    batch = h.shape[:-1]
    h1 = config.hidden[1]
    k2 = layers["2"]["kernel"]
    if stage < 3:
        for i in range(stage, 2):
            h = jnp.tanh(_dense(layers[str(i)], h))
        h = h @ k2[:h1] + layers["2"]["bias"].reshape((1,) * (h.ndim - 1) + (-1,))
    # decoder.2 is one dense layer on concat([m, coords]); its kernel is applied in
    # two blocks so that the z part is computed once per glyph, not once per pixel.
    coords = _coordinates(config.image_size, config.coord_scale)  # [P, 3]
    pixel = coords @ k2[h1:]  # [P, H2]
    lead = (1,) * len(batch)
    h = jnp.tanh(h.reshape(batch + (1, -1)) + pixel.reshape(lead + pixel.shape))
    # The per-pixel layers as plain 2-D matrix products over every pixel of every
    # glyph: XLA's CPU backend runs a rank-3 product several times slower.
    h = h.reshape(-1, h.shape[-1])  # [N * P, H2]
    h = jnp.tanh(_dense(layers["3"], h))
    field = _dense(layers["4"], h).reshape(batch + pixel.shape[:1])  # [..., P]
    field = field - jnp.mean(field, axis=-1, keepdims=True)
    image = jnp.exp(-jnp.square(config.stroke_sharpness * field))
    return image.reshape(batch + (config.image_size, config.image_size))


def _forward(layers: Params, z: jax.Array, config: GlyphConfig) -> jax.Array:
    """The decoder math on a ``{"0": {"kernel", "bias"}, ...}`` dict of arrays."""
    return _tail(layers, z, config, 0)


def _check_z(z: jax.Array, style_z_dim: int) -> None:
    if z.ndim != 1 or z.shape[0] != style_z_dim:
        raise ValueError(
            f"style_z must have shape ({style_z_dim},) (one example; vmap for "
            f"batches), got {z.shape}"
        )


class GlyphDecoder(nnx.Module):
    """Coordinate-network glyph decoder: ``style_z [D] -> image [S, S]`` in (0, 1].

    ``m = tanh(W1 tanh(W0 z))``; per pixel ``h = tanh(W3 tanh(W2 [m; c x, c y,
    c r]))``, ``f = W4 h``; ``image = exp(-(kappa (f - mean f))^2)``. Layers are
    ``self.decoder["0"]`` .. ``self.decoder["4"]`` (``nnx.Linear``), so the
    ``nnx.split`` state paths are ``decoder.<i>.kernel`` / ``decoder.<i>.bias``.

    Args:
      style_z_dim: dimension ``D`` of the style latent.
      image_size: side ``S`` of the output image.
      hidden: widths ``(H0, H1, H2)``.
      coord_scale: scale of the pixel coordinates (see :class:`GlyphConfig`).
      stroke_sharpness: ``kappa`` (see :class:`GlyphConfig`).
      rngs: Flax NNX random streams for the initial weights.

    References:
      Stanley, `Compositional pattern producing networks: a novel abstraction of
      development <https://doi.org/10.1007/s10710-007-9028-8>`_, 2007.

    Examples:
      >>> from flax import nnx
      >>> import jax.numpy as jnp
      >>> dec = GlyphDecoder(rngs=nnx.Rngs(0))
      >>> dec(jnp.zeros(64)).shape
      (32, 32)
    """

    def __init__(
        self,
        style_z_dim: int = 64,
        image_size: int = 32,
        hidden: tuple[int, int, int] = (128, 256, 32),
        *,
        coord_scale: float = 6.0,
        stroke_sharpness: float = 10.0,
        rngs: nnx.Rngs,
    ):
        self.config = GlyphConfig(
            style_z_dim=style_z_dim,
            image_size=image_size,
            hidden=tuple(hidden),
            coord_scale=coord_scale,
            stroke_sharpness=stroke_sharpness,
        )
        h0, h1, h2 = self.config.hidden
        sizes = ((style_z_dim, h0), (h0, h1), (h1 + 3, h2), (h2, h2), (h2, 1))
        self.decoder = nnx.Dict(
            {
                str(i): nnx.Linear(
                    n_in,
                    n_out,
                    kernel_init=nnx.initializers.variance_scaling(
                        _GAINS[i], "fan_in", "normal"
                    ),
                    rngs=rngs,
                )
                for i, (n_in, n_out) in enumerate(sizes)
            }
        )

    @classmethod
    def from_config(cls, config: GlyphConfig, *, rngs: nnx.Rngs) -> "GlyphDecoder":
        """Builds the decoder described by ``config``."""
        return cls(
            config.style_z_dim,
            config.image_size,
            config.hidden,
            coord_scale=config.coord_scale,
            stroke_sharpness=config.stroke_sharpness,
            rngs=rngs,
        )

    def __call__(self, z: jax.typing.ArrayLike) -> jax.Array:
        """Decodes one style latent ``z [D]`` into an image ``[S, S]``."""
        z = jnp.asarray(z, jnp.float32)
        _check_z(z, self.config.style_z_dim)
        layers = {
            k: {"kernel": layer.kernel[...], "bias": layer.bias[...]}
            for k, layer in self.decoder.items()
        }
        return _forward(layers, z, self.config)


class GaussianStylePolicy(nnx.Module):
    """Diagonal Gaussian policy over the style latent: ``z ~ N(mean, exp(log_std)^2)``.

    ``mean`` and ``log_std`` are learned per network, shape ``[D]`` each, initialised
    to 0 (the standard normal). The pure functions :meth:`sample` and
    :meth:`log_prob` take the parameter dict ``{"mean", "log_std"}``.

    Args:
      style_z_dim: dimension ``D``.
      rngs: unused (the initial values are deterministic); accepted for symmetry
        with other NNX modules.

    References:
      Williams, `Simple statistical gradient-following algorithms for
      connectionist reinforcement learning
      <https://doi.org/10.1007/BF00992696>`_, 1992.
    """

    def __init__(self, style_z_dim: int = 64, *, rngs: nnx.Rngs | None = None):
        del rngs
        if style_z_dim < 1:
            raise ValueError(f"style_z_dim must be >= 1, got {style_z_dim}")
        self.mean = nnx.Param(jnp.zeros((style_z_dim,), jnp.float32))
        self.log_std = nnx.Param(jnp.zeros((style_z_dim,), jnp.float32))

    def params(self) -> Params:
        """The pure parameter dict ``{"mean": [D], "log_std": [D]}``."""
        return {"mean": self.mean[...], "log_std": self.log_std[...]}

    @staticmethod
    def sample(params: Params, *, key: jax.Array, n: int) -> jax.Array:
        """Samples ``z = mean + exp(log_std) * eps``, ``eps ~ N(0, I)``, [n, D]; see
        :func:`sample_style_z`."""
        return sample_style_z(params, key=key, n=n)

    @staticmethod
    def log_prob(params: Params, z: jax.typing.ArrayLike) -> jax.Array:
        """Log-density of one ``z [D]``; see :func:`style_z_log_prob`."""
        return style_z_log_prob(params, z)


def sample_style_z(params: Params, *, key: jax.Array, n: int) -> jax.Array:
    """Draws ``n`` style latents from the diagonal Gaussian policy.

    ``z_i = mean + exp(s) * eps_i``, ``eps_i ~ N(0, I)``, ``s = clip(log_std,
    DEFAULT_MIN_LOG_STD, DEFAULT_MAX_LOG_STD)`` (the clip of
    :func:`ol_jax.objectives.gaussian_log_prob`); reparameterised, so the result is
    differentiable in ``mean`` and ``log_std``.

    Args:
      params: ``{"mean": [D], "log_std": [D]}``.
      key: PRNG key.
      n: number of samples (static).

    Returns:
      ``z`` of shape ``[n, D]`` in the dtype of ``mean``.

    References:
      Williams, `Simple statistical gradient-following algorithms for
      connectionist reinforcement learning
      <https://doi.org/10.1007/BF00992696>`_, 1992.
    """
    mean = jnp.asarray(params["mean"])
    log_std = jnp.asarray(params["log_std"])
    if mean.ndim != 1 or log_std.shape != mean.shape:
        raise ValueError(
            "policy mean and log_std must both have shape (D,), got "
            f"{mean.shape} and {log_std.shape}"
        )
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    eps = jax.random.normal(key, (n, mean.shape[0]), mean.dtype)
    # The same clip as gaussian_log_prob, so samples and their log-density agree.
    std = jnp.exp(jnp.clip(log_std, DEFAULT_MIN_LOG_STD, DEFAULT_MAX_LOG_STD))
    return mean[None, :] + std.astype(mean.dtype)[None, :] * eps


def style_z_log_prob(params: Params, z: jax.typing.ArrayLike) -> jax.Array:
    """Log-density of one style latent under the diagonal Gaussian policy.

    ``log p(z) = -1/2 sum_d [((z_d - mu_d) / sigma_d)^2 + 2 s_d + log(2 pi)]`` with
    ``s = clip(log_std, DEFAULT_MIN_LOG_STD, DEFAULT_MAX_LOG_STD)``, ``sigma =
    exp(s)``: :func:`ol_jax.objectives.gaussian_log_prob` on the policy dict.

    Args:
      params: ``{"mean": [D], "log_std": [D]}``.
      z: one latent ``[D]``; vmap for batches.

    Returns:
      Scalar log-density in the dtype of ``mean``.

    References:
      Williams, `Simple statistical gradient-following algorithms for
      connectionist reinforcement learning
      <https://doi.org/10.1007/BF00992696>`_, 1992.
    """
    mean = jnp.asarray(params["mean"])
    _check_z(jnp.asarray(z), mean.shape[0])
    return gaussian_log_prob(z, mean, params["log_std"])


def init_glyph(config: GlyphConfig | None = None, *, key: jax.Array) -> Params:
    """Initial parameters of one glyph network as a plain dict pytree.

    Returns ``{"policy": {"mean", "log_std"}, "decoder": {"0": {"kernel", "bias"},
    ..., "4": {...}}}``; dotted leaf paths (``jax.tree_util.tree_flatten_with_path``
    keys joined with ``"."``) are ``policy.mean`` and ``decoder.<i>.<kernel|bias>``,
    so the prefix ``decoder.3`` selects layer 3.

    Args:
      config: shapes and drawing settings; ``GlyphConfig()`` if None.
      key: PRNG key for the decoder weights (the policy starts at N(0, I)).

    Returns:
      The parameter dict, float32.
    """
    config = GlyphConfig() if config is None else config
    decoder = GlyphDecoder.from_config(config, rngs=nnx.Rngs(params=key))
    policy = GaussianStylePolicy(config.style_z_dim)
    state = nnx.to_pure_dict(nnx.state(decoder))
    return {"policy": policy.params(), "decoder": state["decoder"]}


def decode_glyph(
    decoder_params: Params, z: jax.typing.ArrayLike, config: GlyphConfig | None = None
) -> jax.Array:
    """Pure apply of the glyph decoder: ``style_z [D] -> image [S, S]`` in (0, 1].

    Same math as :class:`GlyphDecoder` on the ``params["decoder"]`` dict of
    :func:`init_glyph`. Layer widths are read from the arrays; ``config`` supplies
    the image size and drawing settings (its ``hidden`` must match the arrays).

    Args:
      decoder_params: ``{"0": {"kernel", "bias"}, ..., "4": {...}}``.
      z: one style latent ``[D]``; vmap for batches.
      config: ``GlyphConfig()`` if None.

    Returns:
      The image ``[S, S]``.

    References:
      Stanley, `Compositional pattern producing networks: a novel abstraction of
      development <https://doi.org/10.1007/s10710-007-9028-8>`_, 2007.
    """
    config = GlyphConfig() if config is None else config
    missing = [
        str(i) for i in range(NUM_DECODER_LAYERS) if str(i) not in decoder_params
    ]
    if missing:
        raise ValueError(
            f"decoder_params must hold layers '0'..'4', missing {missing}; "
            "pass params['decoder'] from init_glyph"
        )
    k0 = decoder_params["0"]["kernel"]
    z = jnp.asarray(z, k0.dtype)
    _check_z(z, k0.shape[0])
    h1 = decoder_params["1"]["kernel"].shape[1]
    if h1 != config.hidden[1]:
        raise ValueError(
            f"config.hidden[1] must equal the width of decoder.1 ({h1}), "
            f"got {config.hidden[1]}"
        )
    return _forward(decoder_params, z, config)


def _check_stage(stage: int) -> None:
    if (
        isinstance(stage, bool)
        or not isinstance(stage, int)
        or not (0 <= stage < NUM_STAGES)
    ):
        raise ValueError(f"stage must be an int in 0..{NUM_STAGES - 1}, got {stage!r}")


def _stage_width(decoder_params: Params, stage: int) -> int:
    if stage == 0:
        return decoder_params["0"]["kernel"].shape[0]
    return decoder_params[str(min(stage, 3) - 1)]["kernel"].shape[1]


def glyph_stage(
    decoder_params: Params, z: jax.typing.ArrayLike, *, stage: int
) -> jax.Array:
    """The part of the decoder that depends on ``z`` alone, up to ``decoder.<stage>``.

    Stage 0 is ``z``; stage 1 is ``tanh(W0 z + b0)``; stage 2 is the modulation
    vector ``m = tanh(W1 tanh(W0 z + b0) + b1)``; stage 3 is ``W2[:H1]^T m + b2``,
    the ``z`` part of ``decoder.2``'s pre-activation (the pixel part is added per
    pixel by :func:`decode_glyph_from`). A learner that fine-tunes only
    ``decoder.<k>`` and later (``k >= stage``) can compute this once per glyph and
    keep it: it never changes, and the rest of the decoder is
    :func:`decode_glyph_from`.

    Args:
      decoder_params: ``params["decoder"]`` of :func:`init_glyph`.
      z: style latents ``[..., D]`` (any leading batch axes).
      stage: 0, 1, 2 or 3 (static).

    Returns:
      ``[..., d]`` with ``d`` = ``D``, ``H0``, ``H1`` or ``H2``.

    References:
      Stanley, `Compositional pattern producing networks: a novel abstraction of
      development <https://doi.org/10.1007/s10710-007-9028-8>`_, 2007.
    """
    _check_stage(stage)
    k0 = decoder_params["0"]["kernel"]
    z = jnp.asarray(z, k0.dtype)
    if z.ndim < 1 or z.shape[-1] != k0.shape[0]:
        raise ValueError(f"style_z must have shape (..., {k0.shape[0]}), got {z.shape}")
    return _head(decoder_params, z, stage)


def decode_glyph_from(
    decoder_params: Params,
    h: jax.typing.ArrayLike,
    config: GlyphConfig | None = None,
    *,
    stage: int,
) -> jax.Array:
    """The rest of the decoder from :func:`glyph_stage` values to glyph images.

    ``decode_glyph_from(p, glyph_stage(p, z, stage=k), stage=k) == decode_glyph(p,
    z)`` for every ``k``. Leading axes of ``h`` are batch axes and the per-pixel
    layers run as one matrix product over every pixel of every glyph, which is
    how a learner decodes a whole feedback window at once.

    Args:
      decoder_params: ``params["decoder"]`` of :func:`init_glyph`.
      h: stage values ``[..., d]``.
      config: ``GlyphConfig()`` if None (its ``hidden`` must match the arrays).
      stage: the stage ``h`` is at, 0..3 (static).

    Returns:
      Images ``[..., S, S]`` in (0, 1].

    References:
      Stanley, `Compositional pattern producing networks: a novel abstraction of
      development <https://doi.org/10.1007/s10710-007-9028-8>`_, 2007.
    """
    config = GlyphConfig() if config is None else config
    _check_stage(stage)
    width = _stage_width(decoder_params, stage)
    h = jnp.asarray(h, decoder_params["0"]["kernel"].dtype)
    if h.ndim < 1 or h.shape[-1] != width:
        raise ValueError(
            f"stage {stage} values must have shape (..., {width}), got {h.shape}"
        )
    if decoder_params["1"]["kernel"].shape[1] != config.hidden[1]:
        raise ValueError(
            "config.hidden[1] must equal the width of decoder.1 "
            f"({decoder_params['1']['kernel'].shape[1]}), got {config.hidden[1]}"
        )
    return _tail(decoder_params, h, config, stage)


def generate_glyphs(
    params: Params, *, key: jax.Array, n: int, config: GlyphConfig | None = None
) -> tuple[jax.Array, jax.Array]:
    """Samples ``n`` style latents from the policy and decodes them.

    Args:
      params: the dict of :func:`init_glyph`.
      key: PRNG key.
      n: number of glyphs (static).
      config: ``GlyphConfig()`` if None.

    Returns:
      ``(z [n, D], images [n, S, S])``.
    """
    z = sample_style_z(params["policy"], key=key, n=n)
    images = jax.vmap(lambda zi: decode_glyph(params["decoder"], zi, config))(z)
    return z, images
