"""Child process for test_crash.py: saves versions in a loop until killed.

Usage: python crash_child.py ROOT NETWORK_ID RUN_ID [STOP_AFTER]

With STOP_AFTER, the child queues that many versions and exits without closing
the store (the queued writes must still land).

The k-th tree this run saves holds ``expected_tree(k)`` and its metadata entry
says ``content: k``, so the parent can recompute every version. Prints
``saved <version> <k>`` after each ``save()`` returns (queued, not yet on disk):
the parent checks that no version number is ever handed out twice.
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
    entries = store.metadata()["entries"]
    k = max((e.get("content", -1) for e in entries), default=-1) + 1
    while stop_after is None or k < stop_after:
        version = store.save(
            expected_tree(k),
            metadata_entry={"rating": k % 10 + 1, "loss": 1.0 / (k + 1), "content": k},
        )
        print(f"saved {version} {k}", flush=True)
        k += 1


if __name__ == "__main__":
    main()
