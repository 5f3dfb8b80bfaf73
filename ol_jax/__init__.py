"""ol_jax: online learning in JAX.

A network's weights change after every piece of feedback, through one pure,
jit-compiled ``step(state, batch) -> (state, metrics)`` built from a loss and an
``optax.GradientTransformation``. See ``ol_jax.core`` for the step and the
transforms, ``ol_jax.objectives`` for the losses, and ``ol_jax.learners`` for the
systems built on them.
"""

__version__ = "0.1.0"
