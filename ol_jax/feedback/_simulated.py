"""A deterministic simulated rater: named personalities scoring glyph features.

Each personality is a target profile over a few :data:`FEATURE_NAMES` with
weights and a tolerance ``tau``. The continuous personality-match score of a glyph
with features ``f`` is

    d^2 = sum_i w_i (f_i - t_i)^2 / sum_i w_i,    match = exp(-d^2 / (2 tau^2)),

in ``(0, 1]`` and differentiable in the image, and its 1-10 rating is

    rating = clip(round(1 + 9 * match + noise_std * eps), 1, 10),  eps ~ N(0, 1).

The targets sit in the tail of what the untrained glyph decoder draws and ``tau``
was calibrated on 4,000 of its glyphs (``init_glyph(key=jax.random.key(0))``,
``z ~ N(0, I)``) so that the mean match is about 0.38 (mean rating about 4.4, a
spread over most of 1..10, 10s rare): learning has room to improve but a random
policy already meets a useful fraction of high ratings.

References:
  Christiano et al., `Deep reinforcement learning from human preferences
  <https://arxiv.org/abs/1706.03741>`_, 2017 (synthetic raters standing in for
  human feedback).
"""

import functools
import hashlib
import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ol_jax.feedback._features import FEATURE_NAMES, glyph_features

MIN_RATING = 1
MAX_RATING = 10


class Personality(NamedTuple):
    """A rater personality: a target feature profile and how strictly it is held.

    Attributes:
      name: the personality's name, e.g. ``"bold"``.
      description: one sentence describing the style, used in prompts.
      targets: ``{feature name: target value in [0, 1]}``.
      weights: ``{feature name: positive weight}``, same keys as ``targets``.
      tolerance: ``tau`` of the match score (a feature distance).
    """

    name: str
    description: str
    targets: Mapping[str, float]
    weights: Mapping[str, float]
    tolerance: float


def _personality(name, description, tolerance, **profile):
    return Personality(
        name=name,
        description=description,
        targets=MappingProxyType({k: v[0] for k, v in profile.items()}),
        weights=MappingProxyType({k: float(v[1]) for k, v in profile.items()}),
        tolerance=tolerance,
    )


_PROFILES: dict[str, Personality] = {
    p.name: p
    for p in (
        _personality(
            "bold",
            "heavy, high-contrast, centred strokes with a lot of ink",
            0.142,
            ink=(0.60, 2),
            contrast=(0.80, 1),
            edges=(0.45, 1),
            offset=(0.03, 1),
        ),
        _personality(
            "playful",
            "lively, lopsided, off-centre strokes with many edges and an open middle",
            0.144,
            edges=(0.75, 2),
            symmetry_tb=(0.15, 1),
            offset=(0.20, 1),
            centre=(0.10, 1),
        ),
        _personality(
            "elegant",
            "thin, sparse strokes sweeping across the canvas around an open middle",
            0.108,
            ink=(0.15, 2),
            edges=(0.70, 1),
            spread=(0.60, 1),
            centre=(0.10, 1),
        ),
        _personality(
            "calm",
            "round, balanced, symmetric shapes with soft, few edges",
            0.241,
            roundness=(0.90, 2),
            symmetry_lr=(0.75, 1),
            symmetry_tb=(0.75, 1),
            edges=(0.45, 1),
        ),
        _personality(
            "technical",
            "straight, elongated, mirror-symmetric, crisp strokes through the centre",
            0.217,
            roundness=(0.08, 2),
            symmetry_lr=(0.75, 1),
            contrast=(0.78, 1),
            centre=(0.35, 1),
        ),
        _personality(
            "whimsical",
            "curly, round, off-centre shapes with an empty middle",
            0.170,
            offset=(0.25, 1),
            centre=(0.05, 1),
            roundness=(0.65, 1),
            symmetry_tb=(0.15, 1),
            ink=(0.30, 1),
        ),
    )
}

PERSONALITIES: tuple[str, ...] = tuple(_PROFILES)


def personality_profile(personality: str) -> Personality:
    """Returns the :class:`Personality` named ``personality``.

    Raises:
      ValueError: for an unknown name.
    """
    if personality not in _PROFILES:
        raise ValueError(
            f"personality must be one of {PERSONALITIES}, got {personality!r}"
        )
    return _PROFILES[personality]


@functools.cache
def _profile_arrays(personality: str) -> tuple[np.ndarray, np.ndarray, float]:
    """Dense target and normalised weight vectors over all FEATURE_NAMES."""
    p = personality_profile(personality)
    targets = np.zeros(len(FEATURE_NAMES), np.float32)
    weights = np.zeros(len(FEATURE_NAMES), np.float32)
    for name, value in p.targets.items():
        i = FEATURE_NAMES.index(name)
        targets[i] = value
        weights[i] = p.weights[name]
    return targets, weights / weights.sum(), p.tolerance


def match_score(image: jax.typing.ArrayLike, personality: str) -> jax.Array:
    """Continuous personality-match score of one glyph, in ``(0, 1]``.

    ``match = exp(-d^2 / (2 tau^2))`` with ``d^2 = sum_i w_i (f_i - t_i)^2 /
    sum_i w_i`` over the glyph features ``f`` (:func:`glyph_features`) and the
    personality's targets ``t``, weights ``w`` and tolerance ``tau``. Smooth in the
    image, so it can be maximised by gradient ascent through a decoder; this is
    the held-out "personality match score" metric.

    Args:
      image: one glyph ``[S, S]`` with values in ``[0, 1]``; vmap for batches.
      personality: one of :data:`PERSONALITIES` (static).

    Returns:
      Scalar score in the image's float dtype.

    References:
      Christiano et al., `Deep reinforcement learning from human preferences
      <https://arxiv.org/abs/1706.03741>`_, 2017.
    """
    targets, weights, tau = _profile_arrays(personality)
    f = glyph_features(image)
    d2 = jnp.sum(
        jnp.asarray(weights, f.dtype) * jnp.square(f - targets.astype(f.dtype))
    )
    return jnp.exp(-d2 / (2.0 * tau * tau)).astype(f.dtype)


def rating_from_match(
    match: jax.typing.ArrayLike, noise: jax.typing.ArrayLike = 0.0
) -> jax.Array:
    """Maps a match score to an integer rating: ``clip(round(1 + 9 m + noise), 1,
    10)``.

    Args:
      match: score(s) in ``[0, 1]``, any shape.
      noise: additive noise in rating units, broadcastable to ``match``'s shape
        only as a scalar or the same shape.

    Returns:
      int32 ratings in ``1..10``, shape of ``match``. A non-finite score maps to 1.

    References:
      Christiano et al., `Deep reinforcement learning from human preferences
      <https://arxiv.org/abs/1706.03741>`_, 2017.
    """
    match = jnp.asarray(match)
    if not jnp.issubdtype(match.dtype, jnp.floating):
        match = match.astype(jnp.float32)
    noise = jnp.asarray(noise, match.dtype)
    raw = 1.0 + 9.0 * match + noise
    raw = jnp.where(jnp.isfinite(raw), raw, float(MIN_RATING))
    return jnp.clip(jnp.round(raw), MIN_RATING, MAX_RATING).astype(jnp.int32)


def simulated_rating(
    image: jax.typing.ArrayLike,
    personality: str,
    *,
    noise_std: float = 0.0,
    key: jax.Array | None = None,
) -> jax.Array:
    """Pure 1-10 rating of one glyph by a simulated personality.

    ``rating = clip(round(1 + 9 match + noise_std * eps), 1, 10)`` with
    ``eps ~ N(0, 1)`` drawn from ``key`` (:func:`match_score`). vmap over images
    (and keys) for batches.

    Args:
      image: one glyph ``[S, S]`` in ``[0, 1]``.
      personality: one of :data:`PERSONALITIES` (static).
      noise_std: standard deviation of the rating noise, in rating units (static).
      key: PRNG key, required when ``noise_std > 0``.

    Returns:
      Scalar int32 rating in ``1..10``.

    References:
      Christiano et al., `Deep reinforcement learning from human preferences
      <https://arxiv.org/abs/1706.03741>`_, 2017.
    """
    _check_noise_std(noise_std)
    match = match_score(image, personality)
    if noise_std == 0.0:
        return rating_from_match(match)
    if key is None:
        raise ValueError(
            f"key is required when noise_std > 0, got noise_std={noise_std}"
        )
    eps = jax.random.normal(key, (), match.dtype)
    return rating_from_match(match, noise_std * eps)


def _check_noise_std(noise_std: float) -> None:
    if not (isinstance(noise_std, int | float) and math.isfinite(noise_std)) or (
        noise_std < 0
    ):
        raise ValueError(f"noise_std must be a finite number >= 0, got {noise_std!r}")


@functools.cache
def _jitted_rater(personality: str, noise_std: float):
    def one(image, key):
        return match_score(image, personality), simulated_rating(
            image, personality, noise_std=noise_std, key=key
        )

    def batch(images, seed, digests):
        # One key per glyph: fold the glyph's digest into the rater's seed.
        keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(
            jax.random.key(seed), digests
        )
        return jax.vmap(one)(images, keys)

    return jax.jit(batch)


def _host_images(images: jax.typing.ArrayLike, batched: bool) -> np.ndarray:
    arr = np.asarray(images, dtype=np.float32)
    expected = 3 if batched else 2
    if arr.ndim != expected or arr.shape[-1] != arr.shape[-2] or arr.shape[-1] < 2:
        what = "[N, S, S]" if batched else "[S, S]"
        raise ValueError(f"image must have shape {what}, got {arr.shape}")
    if not np.all(np.isfinite(arr)) or arr.min() < 0.0 or arr.max() > 1.0:
        raise ValueError(
            "image values must be finite and in [0, 1], got range "
            f"[{np.nanmin(arr)}, {np.nanmax(arr)}]"
        )
    return arr


def image_digest(image: np.ndarray) -> int:
    """A 31-bit digest of a glyph quantised to 8 bits, for per-glyph noise keys.

    Quantising first makes the digest (and so the rating noise) the same for the
    same glyph however it was computed (jit or eager, tiny float differences).
    """
    quantised = np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
    header = np.asarray(quantised.shape, np.int64).tobytes()
    digest = hashlib.blake2b(header + quantised.tobytes(), digest_size=4).digest()
    return int.from_bytes(digest, "little") & 0x7FFFFFFF


class SimulatedRater:
    """The offline default rater: a personality scoring glyph features, 1..10.

    Deterministic: the same glyph always gets the same rating from the same
    ``(personality, noise_std, seed)``. With ``noise_std > 0`` the noise for a
    glyph is drawn from ``fold_in(key(seed), digest(glyph))``, so it is
    reproducible and differs between glyphs.

    Args:
      personality: one of :data:`PERSONALITIES`.
      noise_std: standard deviation of the rating noise, in rating units.
      seed: seed of the noise.

    Examples:
      >>> import jax.numpy as jnp
      >>> rater = SimulatedRater("calm")
      >>> 1 <= rater.rate(jnp.zeros((32, 32))) <= 10
      True
    """

    def __init__(self, personality: str, *, noise_std: float = 0.0, seed: int = 0):
        self._profile = personality_profile(personality)
        _check_noise_std(noise_std)
        if not isinstance(seed, int | np.integer) or not 0 <= seed < 2**32:
            raise ValueError(f"seed must be an integer in [0, 2**32), got {seed!r}")
        self.noise_std = float(noise_std)
        self.seed = int(seed)
        self._rate = _jitted_rater(personality, self.noise_std)

    @property
    def personality(self) -> str:
        """The personality's name."""
        return self._profile.name

    @property
    def profile(self) -> Personality:
        """The personality's targets, weights and tolerance."""
        return self._profile

    def match_score(self, image: jax.typing.ArrayLike) -> jax.Array:
        """Pure continuous score in ``(0, 1]`` of one glyph; see :func:`match_score`."""
        return match_score(image, self.personality)

    def rating(
        self, image: jax.typing.ArrayLike, *, key: jax.Array | None = None
    ) -> jax.Array:
        """Pure int32 rating of one glyph; see :func:`simulated_rating`."""
        return simulated_rating(
            image, self.personality, noise_std=self.noise_std, key=key
        )

    def rate_batch_with_scores(
        self, images: jax.typing.ArrayLike
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rates ``images [N, S, S]``: ``(ratings int32 [N], match scores [N])``."""
        arr = _host_images(images, batched=True)
        digests = np.asarray([image_digest(im) for im in arr], np.uint32)
        scores, ratings = self._rate(arr, np.uint32(self.seed), digests)
        return np.asarray(ratings), np.asarray(scores)

    def rate_batch(self, images: jax.typing.ArrayLike) -> np.ndarray:
        """Rates ``images [N, S, S]``; returns int32 ratings ``[N]`` in 1..10."""
        return self.rate_batch_with_scores(images)[0]

    def rate(self, image: jax.typing.ArrayLike) -> int:
        """Rates one glyph ``[S, S]`` with values in ``[0, 1]``; returns 1..10."""
        arr = _host_images(image, batched=False)
        return int(self.rate_batch(arr[None])[0])

    def __repr__(self) -> str:
        return (
            f"SimulatedRater({self.personality!r}, noise_std={self.noise_std}, "
            f"seed={self.seed})"
        )
