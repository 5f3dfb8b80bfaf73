"""The MCP weight tools as an attacker and a clumsy user would call them.

In process (``MCPServer.call_tool``) with a small learner, so that each case is
fast: ``save_weights`` never deletes or overwrites what it did not write, and no
read or write leaves the allowed folder, even through planted or swapped symlinks.
"""

import hashlib
import json
import os
import threading

import anyio
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from mcp.server.mcpserver.exceptions import ToolError

import ol_jax.store  # noqa: F401  (registers the "custom" / Orbax format)
from ol_jax.cli._mcp import build_mcp_server
from ol_jax.learners import BufferedLearner, ByteTokenizer
from ol_jax.models import save_weights

V = ByteTokenizer.vocab_size


def bigram_learner(seed=0):
    params = {"w": jax.random.normal(jax.random.key(seed), (V, V), jnp.float32)}
    return BufferedLearner(
        lambda p, tokens: p["w"][tokens],
        params,
        key=jax.random.key(0),
        background=False,
    )


def call(server, name, **arguments):
    """``(is_error, message or reply)`` of one tool call."""
    try:
        result = anyio.run(server.call_tool, name, arguments)
    except ToolError as e:
        return True, str(e)
    return False, json.loads(result.content[0].text)


def snapshot(folder):
    """``{relative path: sha256, 'dir' or 'link -> target'}`` under ``folder``."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, folder)
            if os.path.islink(full):
                out[rel] = "link -> " + os.readlink(full)
            elif os.path.isdir(full):
                out[rel] = "dir"
            else:
                with open(full, "rb") as f:
                    out[rel] = hashlib.sha256(f.read()).hexdigest()
    return out


@pytest.fixture
def served(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    learner = bigram_learner()
    return build_mcp_server(learner, root=root), learner, root, outside


def test_save_on_the_root_or_a_folder_deletes_nothing(served):
    server, _, root, _ = served
    (root / "notes.txt").write_text("a user's own file")
    (root / "data").mkdir()
    (root / "data" / "table.csv").write_text("1,2,3")
    before = snapshot(root)
    for file_path in (".", "./", "data", "data/", os.path.join(str(root), "data")):
        for overwrite in (False, True):
            is_error, message = call(
                server, "save_weights", file_path=file_path, overwrite=overwrite
            )
            assert is_error, (file_path, message)
            assert snapshot(root) == before, file_path
    assert "allowed folder" in call(server, "save_weights", file_path=".")[1]
    assert (
        "never replaces a folder" in call(server, "save_weights", file_path="data")[1]
    )


def test_an_existing_file_is_not_overwritten(served):
    server, learner, root, _ = served
    (root / "notes.safetensors").write_bytes(b"not weights, a user's notes")
    (root / "notes.bin").write_bytes(b"raw user data")
    before = snapshot(root)
    for name, fmt in (("notes.safetensors", "safetensors"), ("notes.bin", "binary")):
        for overwrite in (False, True):
            is_error, message = call(
                server,
                "save_weights",
                file_path=name,
                format=fmt,
                overwrite=overwrite,
            )
            assert is_error and name in message, message
    assert snapshot(root) == before
    # Weights saved before are replaced only when the call says so.
    for name, fmt in (("w.safetensors", "safetensors"), ("w.bin", "binary")):
        assert not call(server, "save_weights", file_path=name, format=fmt)[0]
        saved = snapshot(root)
        is_error, message = call(server, "save_weights", file_path=name, format=fmt)
        assert is_error and "overwrite" in message
        assert snapshot(root) == saved
        assert not call(
            server, "save_weights", file_path=name, format=fmt, overwrite=True
        )[0]
        assert not call(server, "load_weights", file_path=name)[0]
    # A safetensors file is not "weights of the same format" for binary.
    is_error, message = call(
        server,
        "save_weights",
        file_path="w.safetensors",
        format="binary",
        overwrite=True,
    )
    assert is_error and "same format" in message
    # An Orbax checkpoint is a folder: never replaced.
    assert not call(server, "save_weights", file_path="ckpt")[0]
    saved = snapshot(root)
    assert call(server, "save_weights", file_path="ckpt", overwrite=True)[0]
    assert snapshot(root) == saved


def test_a_symlink_planted_at_the_old_temp_name_redirects_nothing(served):
    """Finding (a): the temp names were ``<file>.tmp-<pid>``, predictable."""
    server, _, root, outside = served
    victims = {}
    for name in ("w.bin", "w.bin.json", "w.safetensors"):
        victim = outside / f"victim-{name}"
        victim.write_bytes(b"precious")
        os.symlink(victim, root / f"{name}.tmp-{os.getpid()}")
        victims[victim] = b"precious"
    for name, fmt in (("w.bin", "binary"), ("w.safetensors", "safetensors")):
        call(server, "save_weights", file_path=name, format=fmt)
    for victim, data in victims.items():
        assert victim.read_bytes() == data
    # The planted links are not the server's to delete either.
    for name in ("w.bin", "w.bin.json", "w.safetensors"):
        assert os.path.islink(root / f"{name}.tmp-{os.getpid()}")


def test_a_folder_swapped_for_a_symlink_during_saves_writes_nothing_outside(served):
    """Finding (b): a thread keeps swapping ``sub`` for a symlink to a folder
    outside while saves into ``sub/`` run."""
    server, _, root, outside = served
    sub, hidden = root / "sub", root / "sub-real"
    sub.mkdir()
    stop = threading.Event()
    swaps = [0]

    def swap():
        while not stop.is_set():
            os.rename(sub, hidden)
            os.symlink(outside, sub)
            os.unlink(sub)
            os.rename(hidden, sub)
            swaps[0] += 1

    thread = threading.Thread(target=swap)
    thread.start()
    saved = refused = 0
    try:
        plan = [("binary", ".bin"), ("safetensors", ".safetensors")] * 60
        plan += [("custom", "")] * 10
        for i, (fmt, suffix) in enumerate(plan):
            is_error, _ = call(
                server, "save_weights", file_path=f"sub/w{i}{suffix}", format=fmt
            )
            saved += not is_error
            refused += is_error
    finally:
        stop.set()
        thread.join()
    assert swaps[0] > 0 and saved > 0
    assert os.listdir(outside) == []
    # Nothing half-written is left behind either.
    leftovers = [p for p in snapshot(root) if p.endswith(".tmp")]
    assert leftovers == []


def test_the_manifest_beside_a_bin_file_is_checked_too(served):
    """Finding (c): ``w.bin.json`` was read through a symlink to a file outside,
    and the error quoted its ``format`` field."""
    server, _, root, outside = served
    (outside / "secret.json").write_text(json.dumps({"format": "SECRET-7f3a"}))
    (root / "w.bin").write_bytes(np.float32([1, 2, 3]).tobytes())
    os.symlink(outside / "secret.json", root / "w.bin.json")
    is_error, message = call(server, "load_weights", file_path="w.bin")
    assert is_error
    assert "SECRET-7f3a" not in message
    assert "symlink" in message and "w.bin" in message


@pytest.mark.parametrize(
    "file_path",
    ["../outside/w.safetensors", "sub/../../outside/w.safetensors", "link/w.bin"],
)
def test_paths_out_of_the_folder_are_refused_for_reads_and_writes(served, file_path):
    server, _, root, outside = served
    os.symlink(outside, root / "link")
    save_weights({"w": np.ones(2, np.float32)}, outside / "w.safetensors")
    save_weights({"w": np.ones(2, np.float32)}, outside / "w.bin")
    before = snapshot(outside)
    for tool in ("load_weights", "save_weights"):
        is_error, message = call(server, tool, file_path=file_path)
        assert is_error and "allowed folder" in message, message
    assert snapshot(outside) == before


def test_a_rejected_load_changes_nothing(served):
    server, learner, root, _ = served
    assert not call(server, "save_weights", file_path="w.bin", format="binary")[0]
    manifest = json.loads((root / "w.bin.json").read_text())
    before = np.asarray(learner.params["w"]).tobytes()
    stats = learner.stats().to_dict()
    cases = {
        "shape.bin": {
            **manifest,
            "tensors": [{**manifest["tensors"][0], "shape": [-1]}],
        },
        "missing.bin": {k: v for k, v in manifest.items() if k != "total_bytes"},
    }
    for name, bad in cases.items():
        (root / name).write_bytes((root / "w.bin").read_bytes())
        (root / f"{name}.json").write_text(json.dumps(bad))
    (root / "cut.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    for name in (*cases, "cut.safetensors"):
        is_error, message = call(server, "load_weights", file_path=name)
        assert is_error and name in message, message
    assert np.asarray(learner.params["w"]).tobytes() == before
    assert learner.stats().to_dict() == stats
