"""Crash safety: SIGKILL a process that is saving; the store must stay consistent."""

import os
import pathlib
import subprocess
import sys
import time

import numpy as np

from ol_jax.store import RunStore

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
from crash_child import expected_tree  # noqa: E402

NETWORK = "crash"
RUN = "crash-run"
_TMP = "orbax-checkpoint-tmp"


def _listed(reader: RunStore) -> list[int]:
    """The versions the run's metadata lists, read as another process would."""
    try:
        return reader.metadata(RUN)["versions"]
    except ValueError:  # no metadata yet
        return []


def _run_child_and_kill(
    root: pathlib.Path, reader: RunStore, *, extra: int, mid_save: bool
):
    """Starts the child, waits until `extra` more versions are listed, SIGKILLs it."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    run_dir = root / NETWORK / "runs" / RUN
    target = len(_listed(reader)) + extra
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "crash_child.py"), str(root), NETWORK, RUN],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while len(_listed(reader)) < target:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "child saved too slowly"
            time.sleep(0.005)
        if mid_save:
            # Kill while Orbax is writing the next version's temporary folder.
            while not any(_TMP in n for n in os.listdir(run_dir)):
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.001)
        # Otherwise kill right after a metadata write.
        assert proc.poll() is None
    finally:
        proc.kill()  # SIGKILL
        proc.wait()
        proc.stderr.close()
        handed_out = [tuple(map(int, line.split()[1:])) for line in proc.stdout]
        proc.stdout.close()
    assert proc.returncode == -9
    return handed_out


def _assert_tree_equal(actual, expected):
    import jax

    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        assert np.asarray(a).dtype == e.dtype
        assert np.asarray(a).tobytes() == e.tobytes()


def test_sigkill_during_saves_keeps_store_consistent(tmp_path, make_network):
    root = make_network(tmp_path, NETWORK, queue_size=2)
    run_dir = root / NETWORK / "runs" / RUN
    reader = RunStore(root, NETWORK)
    last = -1
    handed_out: dict[int, int] = {}  # version -> content, over every process
    for mid_save in (True, False):
        for version, content in _run_child_and_kill(
            root, reader, extra=3, mid_save=mid_save
        ):
            assert version not in handed_out, f"version {version} handed out twice"
            handed_out[version] = content
        # What the killed process left: intact metadata listing restorable
        # versions (a torn last record is dropped by the reader).
        meta = reader.metadata(RUN)
        listed = meta["versions"]
        assert listed == sorted(listed) and listed[-1] > last
        assert meta["current_version"] == listed[-1]
        entry_versions = [e["version"] for e in meta["entries"]]
        assert set(listed) <= set(entry_versions)
        assert entry_versions == sorted(entry_versions)
        content = {e["version"]: e.get("content") for e in meta["entries"]}
        # Read-only access (no reconciliation): every listed version restores
        # bit-exactly to what the child saved under that number.
        for v in listed:
            assert handed_out.get(v, content[v]) == content[v]
            _assert_tree_equal(reader.restore(v, run_id=RUN), expected_tree(content[v]))

        # Reopening the run cleans up and continues the numbering.
        with RunStore(root, NETWORK) as store:
            store.start_run(RUN)
            versions = store.versions()
            assert set(listed) <= set(versions)
            latest = store.latest_version()
            assert latest >= listed[-1]
            content = {
                e["version"]: e.get("content") for e in store.metadata()["entries"]
            }
            _assert_tree_equal(store.restore(), expected_tree(content[latest]))
            assert not [n for n in os.listdir(run_dir) if _TMP in n]
            last = latest
    reader.close()


def test_exit_without_close_finishes_queued_writes(tmp_path, make_network):
    root = make_network(tmp_path, NETWORK, queue_size=8)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    subprocess.run(
        [sys.executable, str(HERE / "crash_child.py"), str(root), NETWORK, RUN, "6"],
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    with RunStore(root, NETWORK) as store:
        store.start_run(RUN)
        assert store.versions() == list(range(6))
        _assert_tree_equal(store.restore(), expected_tree(5))
