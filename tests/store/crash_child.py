"""Child process for test_crash.py: saves versions in a loop until killed.

Usage: python crash_child.py ROOT NETWORK_ID RUN_ID [STOP_AFTER]

With STOP_AFTER, the child queues that many versions and exits without closing
the store (the queued writes must still land).

Version v holds ``expected_tree(v)``, so the parent can recompute every version.
Prints ``saved <v>`` after each ``save()`` returns (queued, not yet on disk).
"""

import sys

import numpy as np

N = 1 << 20  # 4 MiB of float32 per version, plus bf16 and int32 leaves


def expected_tree(version: int) -> dict:
    """Deterministic contents of a version."""
    import ml_dtypes

    base = np.arange(N, dtype=np.float32) * np.float32(1e-3)
    return {
        "decoder": {
            "kernel": base + np.float32(version),
            "bias": (np.arange(4096, dtype=np.float32) - version).astype(
                ml_dtypes.bfloat16
            ),
        },
        "step": np.full((16,), version, np.int32),
    }


def main() -> None:
    from ol_jax.store import RunStore

    root, network_id, run_id = sys.argv[1:4]
    stop_after = int(sys.argv[4]) if len(sys.argv) > 4 else None
    store = RunStore(root, network_id)
    store.start_run(run_id)
    version = store.latest_version()
    version = 0 if version is None else version + 1
    while stop_after is None or version < stop_after:
        store.save(
            expected_tree(version),
            version=version,
            metadata_entry={"rating": version % 10 + 1, "loss": 1.0 / (version + 1)},
        )
        print(f"saved {version}", flush=True)
        version += 1


if __name__ == "__main__":
    main()
