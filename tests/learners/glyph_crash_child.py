"""Child process for test_glyph_crash.py: rates glyphs until it is killed.

Usage: python glyph_crash_child.py ROOT NETWORK_ID RUN_ID SEED

Opens (or resumes) the run through the public API and rates glyphs, alternating
paced stretches (one rating at a time, a few ms apart) and bursts (four threads
rating as fast as they can). Prints, each line flushed as soon as it is true:

* ``ready`` once the learner is open,
* ``ack <glyph id> <rating>`` after ``feedback()`` returned,
* ``version <n> <digest>`` after ``save()`` handed out version ``n`` for a tree
  whose leaves hash to ``digest``.
"""

import hashlib
import sys
import threading
import time

import jax
import numpy as np

_PRINT = threading.Lock()


def say(line: str) -> None:
    with _PRINT:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def _name(path) -> str:
    """A leaf's path with dict keys, attribute names and indices alike, so a
    tree and its restored copy (namedtuples come back as dicts) agree."""
    return "/".join(
        str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path
    )


def tree_digest(tree) -> str:
    """A hash of every leaf's path, dtype, shape and bytes."""
    h = hashlib.sha256()
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    for name, leaf in sorted((_name(p), leaf) for p, leaf in leaves):
        a = np.asarray(leaf)
        h.update(f"{name}{a.dtype}{a.shape}".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def main() -> None:
    from ol_jax.core import enable_compilation_cache
    from ol_jax.learners import GlyphLearner
    from ol_jax.store import RunStore

    class AnnouncingStore(RunStore):
        """Prints every version number it hands out."""

        def save(self, params, **kwargs):
            digest = tree_digest(jax.device_get(params))
            version = super().save(params, **kwargs)
            say(f"version {version} {digest}")
            return version

    enable_compilation_cache()
    root, network_id, run_id, seed = sys.argv[1:5]
    rng = np.random.default_rng(int(seed))
    learner = GlyphLearner(AnnouncingStore(root, network_id), run_id=run_id)
    learner.generate(16)  # compiled before the clock starts
    say("ready")

    def rate(glyphs, ratings, pause):
        for g, r in zip(glyphs, ratings, strict=True):
            learner.feedback(g.id, int(r))
            say(f"ack {g.id} {int(r)}")
            if pause:
                time.sleep(pause)

    while True:
        glyphs = learner.generate(16)
        ratings = rng.integers(1, 11, size=len(glyphs))
        if rng.random() < 0.5:
            rate(glyphs, ratings, 0.02)
        else:
            threads = [
                threading.Thread(target=rate, args=(glyphs[i::4], ratings[i::4], 0))
                for i in range(4)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            time.sleep(0.3)


if __name__ == "__main__":
    main()
