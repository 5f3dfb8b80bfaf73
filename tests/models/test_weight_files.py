"""Weight files on disk: what save_weights may touch, what load_weights reports.

Saving never deletes or replaces what it did not write; with ``root=`` no read or
write leaves that folder or follows a symlink; every problem with a file being
read is a ``WeightFileError`` naming the file and what is wrong with it.
"""

import errno
import hashlib
import json
import os
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ol_jax.store  # noqa: F401  (registers the "ol_jax" Orbax format)
from ol_jax.models import (
    WeightFileError,
    _files,
    load_weights,
    resolve_in_root,
    save_weights,
)

TREE = {"a": np.float32([1, 2, 3]), "b": {"c": np.ones((2, 2), np.float16)}}


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


# ------------------------------------------------------------------ loading


def _binary_case(tmp_path, edit):
    save_weights(TREE, tmp_path / "w.bin")
    manifest = json.loads((tmp_path / "w.bin.json").read_text())
    text = edit(manifest)
    (tmp_path / "w.bin.json").write_text(
        text if isinstance(text, str) else json.dumps(text)
    )
    return "w.bin"


def _safetensors_case(tmp_path, edit):
    from safetensors.numpy import save_file

    tensors = {"a": np.float32([1, 2, 3]), "b.c": np.ones((2, 2), np.float16)}
    save_file(tensors, str(tmp_path / "w.safetensors"), metadata=edit())
    return "w.safetensors"


CORRUPT = {
    # (what the old code raised) -> how the file is broken
    "manifest not JSON (JSONDecodeError)": lambda p: _binary_case(
        p, lambda m: "{not json"
    ),
    "manifest not UTF-8 (UnicodeDecodeError)": lambda p: (
        _binary_case(p, lambda m: m),
        (p / "w.bin.json").write_bytes(b"\xff\xfe{"),
    )[0],
    "manifest lacks total_bytes (KeyError)": lambda p: _binary_case(
        p, lambda m: {k: v for k, v in m.items() if k != "total_bytes"}
    ),
    "manifest entry lacks shape (KeyError)": lambda p: _binary_case(
        p, lambda m: {**m, "tensors": [{"name": "a", "dtype": "float32", "offset": 0}]}
    ),
    "manifest tree nested 100k deep (RecursionError)": lambda p: _binary_case(
        p,
        lambda m: json.dumps(m)[:-1] + ', "x": ' + "[" * 100_000 + "]" * 100_000 + "}",
    ),
    "manifest tree names a missing tensor (KeyError)": lambda p: _binary_case(
        p, lambda m: {**m, "tree": ["dict", [["a", "str", "zzz"]]]}
    ),
    "manifest is a list (AttributeError)": lambda p: _binary_case(p, lambda m: [1]),
    "safetensors tree names a missing tensor (KeyError)": lambda p: _safetensors_case(
        p, lambda: {"ol_jax.tree": json.dumps(["dict", [["a", "str", "nope"]]])}
    ),
    "safetensors tree not JSON (JSONDecodeError)": lambda p: _safetensors_case(
        p, lambda: {"ol_jax.tree": "{oops"}
    ),
    "safetensors tree malformed (TypeError)": lambda p: _safetensors_case(
        p, lambda: {"ol_jax.tree": json.dumps(["dict", 5])}
    ),
    "empty gguf (ValueError without the name)": lambda p: (
        (p / "w.gguf").write_bytes(b""),
        "w.gguf",
    )[1],
}


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_every_load_error_names_the_file(tmp_path, case):
    name = CORRUPT[case](tmp_path)
    for kwargs, path in (({}, tmp_path / name), ({"root": tmp_path}, name)):
        with pytest.raises(WeightFileError) as info:
            load_weights(path, **kwargs)
        assert name in str(info.value)
        assert str(info.value.path).endswith(name)


def _entry(**change):
    def edit(m):
        return {**m, "tensors": [{**m["tensors"][0], **change}, *m["tensors"][1:]]}

    return edit


DISAGREEING = {
    "negative dimension": (_entry(shape=[-1]), "non-negative"),
    "product larger than the data": (_entry(shape=[4]), "offset 12"),
    "product smaller than the data": (_entry(shape=[2]), "offset"),
    "product wrapping to 0 in int64": (_entry(shape=[2**62, 4]), "ends at byte"),
    "float dimension": (_entry(shape=[3.0]), "non-negative"),
    "bool dimension": (_entry(shape=[True, 3]), "non-negative"),
    "unknown dtype": (_entry(dtype="int8"), "dtype"),
    "shifted offset": (_entry(offset=4), "offset"),
    "overlapping tensors": (
        lambda m: {
            **m,
            "tensors": [m["tensors"][0], {**m["tensors"][1], "offset": 0}],
        },
        "offset",
    ),
    "duplicate names": (
        lambda m: {**m, "tensors": [m["tensors"][0], {**m["tensors"][1], "name": "a"}]},
        "name",
    ),
    "total_bytes beyond the file": (lambda m: {**m, "total_bytes": 10**30}, "bytes"),
    "tensors not covering the data": (
        lambda m: {**m, "tensors": m["tensors"][:1], "tree": None},
        "accounts for",
    ),
    "tree leaving out a tensor": (
        lambda m: {**m, "tree": ["dict", [["a", "str", "a"]]]},
        "leaves out",
    ),
}


@pytest.mark.parametrize("case", sorted(DISAGREEING))
def test_a_manifest_disagreeing_with_the_data_is_refused(tmp_path, case):
    edit, match = DISAGREEING[case]
    name = _binary_case(tmp_path, edit)
    with pytest.raises(WeightFileError, match=match) as info:
        load_weights(tmp_path / name)
    assert "w.bin" in str(info.value)


def test_errors_name_the_file_when_read_through_a_private_copy(tmp_path, monkeypatch):
    # Where /proc/self/fd is missing, files are read from a private copy; the
    # messages still name the caller's file, not the copy.
    monkeypatch.setattr(_files, "fd_path", lambda fd: None)
    save_weights(TREE, tmp_path / "w.safetensors")
    assert load_weights("w.safetensors", root=tmp_path)["a"].shape == (3,)
    (tmp_path / "x.gguf").write_bytes(b"GGUF" + bytes(40))
    with pytest.raises(WeightFileError) as info:
        load_weights("x.gguf", root=tmp_path)
    assert "x.gguf" in str(info.value) and "ol_jax-load-" not in str(info.value)


def test_a_fifo_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "w.safetensors")
    for root, path in ((tmp_path, "w.safetensors"), (None, tmp_path / "w.safetensors")):
        with pytest.raises(WeightFileError, match="neither a file nor a folder"):
            load_weights(path, root=root)


def test_symlinks_refused_under_a_root_followed_without(tmp_path):
    (tmp_path / "root").mkdir()
    save_weights(TREE, tmp_path / "real.bin")
    for name in ("w.bin", "w.bin.json"):  # the data, then only its manifest
        os.symlink(tmp_path / f"real{name[1:]}", tmp_path / "root" / name)
        with pytest.raises(WeightFileError, match="symlink"):
            load_weights("w.bin", root=tmp_path / "root")
        os.unlink(tmp_path / "root" / name)
        (tmp_path / "root" / name).write_bytes(
            (tmp_path / f"real{name[1:]}").read_bytes()
        )
    # A library caller's own path may be a link (a Hugging Face cache is).
    os.symlink(tmp_path / "real.bin", tmp_path / "link.bin")
    os.symlink(tmp_path / "real.bin.json", tmp_path / "link.bin.json")
    assert load_weights(tmp_path / "link.bin")["a"].tolist() == [1, 2, 3]


def test_a_symlink_inside_a_checkpoint_folder_is_not_followed(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    save_weights(TREE, root / "ckpt", format="ol_jax")
    assert load_weights("ckpt", root=root)["a"].tolist() == [1, 2, 3]
    (tmp_path / "secret").write_text("outside")
    os.symlink(tmp_path / "secret", root / "ckpt" / "extra")
    with pytest.raises(WeightFileError, match="'extra' is a symlink"):
        load_weights("ckpt", root=root)


# ------------------------------------------------------------------ saving


def test_save_refuses_the_root_folders_and_existing_files(tmp_path, monkeypatch):
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "t.csv").write_text("1,2")
    (tmp_path / "w.safetensors").write_bytes(b"not weights")
    os.symlink(tmp_path / "notes.txt", tmp_path / "link.bin")
    before = snapshot(tmp_path)
    monkeypatch.chdir(tmp_path)
    cases = [
        (".", "ol_jax", None, "folder"),  # the current folder, no root
        (".", "ol_jax", tmp_path, "allowed folder"),
        ("data", "ol_jax", tmp_path, "never replaces a folder"),
        ("data", "safetensors", None, "never replaces a folder"),
        ("w.safetensors", None, tmp_path, "overwrite=True"),
        ("link.bin", None, tmp_path, "not a regular file"),
    ]
    for path, fmt, root, match in cases:
        for overwrite in (False, True):
            kwargs = {"overwrite": True} if overwrite else {}
            if root is not None:
                kwargs["root"] = root
            with pytest.raises(WeightFileError, match=None if overwrite else match):
                save_weights(TREE, path, format=fmt, **kwargs)
            assert snapshot(tmp_path) == before, (path, overwrite)
    with pytest.raises(WeightFileError, match="same format"):
        save_weights(TREE, "w.safetensors", root=tmp_path, overwrite=True)
    assert snapshot(tmp_path) == before


def test_overwrite_replaces_only_weights_of_the_same_format(tmp_path):
    new = {"a": np.float32([7, 8, 9]), "b": {"c": np.zeros((2, 2), np.float16)}}
    for name in ("w.safetensors", "w.bin"):
        save_weights(TREE, name, root=tmp_path)
        save_weights(new, name, root=tmp_path, overwrite=True)
        assert load_weights(name, root=tmp_path)["a"].tolist() == [7, 8, 9]
    # A manifest without its data (or data without its manifest) is not binary
    # weights: neither half is replaced.
    (tmp_path / "half.bin.json").write_bytes((tmp_path / "w.bin.json").read_bytes())
    (tmp_path / "other.bin").write_bytes(b"\0" * 12)
    before = snapshot(tmp_path)
    for name in ("half.bin", "other.bin"):
        with pytest.raises(WeightFileError, match="same format"):
            save_weights(new, name, root=tmp_path, overwrite=True)
    assert snapshot(tmp_path) == before
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_temp_names_are_unpredictable_and_exclusive(tmp_path):
    names = {_files._temp_name("w.bin") for _ in range(100)}
    assert len(names) == 100
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        out, tmp = _files.create_temp(fd, "w.bin")
        os.close(out)
        assert tmp.startswith(".w.bin.") and (tmp_path / tmp).is_file()
    finally:
        os.close(fd)


@pytest.mark.parametrize("renameat2", [True, False])
def test_a_name_appearing_mid_save_is_not_replaced(tmp_path, monkeypatch, renameat2):
    if not renameat2:
        monkeypatch.setattr(_files, "_RENAMEAT2", None)
    real = _files.create_temp

    def racing(fd, name):  # another process creates the file meanwhile
        (tmp_path / name).write_text("theirs")
        return real(fd, name)

    monkeypatch.setattr(_files, "create_temp", racing)
    for name in ("w.safetensors", "w.bin"):
        with pytest.raises(WeightFileError, match="appeared"):
            save_weights(TREE, name, root=tmp_path)
        assert (tmp_path / name).read_text() == "theirs"
    monkeypatch.setattr(_files, "create_temp", real)
    # A folder (Orbax) appearing meanwhile is not replaced either.
    real_save = ol_jax.store._tree_file.save_pytree

    def racing_save(path, tree, **kwargs):
        (tmp_path / "ckpt").mkdir(exist_ok=True)
        return real_save(path, tree, **kwargs)

    monkeypatch.setattr(ol_jax.store._tree_file, "save_pytree", racing_save)
    with pytest.raises(WeightFileError, match="appeared"):
        save_weights(TREE, "ckpt", format="ol_jax", root=tmp_path)
    assert os.listdir(tmp_path / "ckpt") == []
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_staged_checkpoint_copied_across_filesystems(tmp_path, monkeypatch):
    real = _files.rename_noreplace

    def no_cross_device(src_fd, src, dst_fd, dst):
        if src_fd is None:  # from the private staging folder
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))
        return real(src_fd, src, dst_fd, dst)

    monkeypatch.setattr(_files, "rename_noreplace", no_cross_device)
    (tmp_path / "sub").mkdir()
    save_weights(TREE, "sub/ckpt", format="ol_jax", root=tmp_path)
    assert load_weights(tmp_path / "sub" / "ckpt")["a"].tolist() == [1, 2, 3]
    assert sorted(os.listdir(tmp_path / "sub")) == ["ckpt"]


# ------------------------------------------------------------------ paths


SEGMENT = st.sampled_from(["a", "b", "..", ".", "", "c.bin"])


@settings(max_examples=60, deadline=None)
@given(parts=st.lists(SEGMENT, min_size=1, max_size=6))
def test_resolve_in_root_stays_inside(tmp_path_factory, parts):
    root = tmp_path_factory.getbasetemp() / "resolve-root"
    (root / "a" / "b").mkdir(parents=True, exist_ok=True)
    path = "/".join(parts)
    if not path:
        return
    lexical = os.path.normpath(os.path.join(root, path))
    try:
        got = resolve_in_root(root, path)
    except WeightFileError as e:
        inside = os.path.commonpath([str(root), lexical]) == str(root)
        # Refused: outside, the root itself, or a folder on the way missing.
        assert not inside or lexical == str(root) or "does not exist" in str(e)
    else:
        assert got == lexical and got != str(root)
        assert os.path.commonpath([str(root), got]) == str(root)


def test_weight_file_error_is_a_value_error_that_pickles():
    e = WeightFileError("w.bin", "is truncated")
    assert isinstance(e, ValueError) and str(e) == "weights file 'w.bin': is truncated"
    back = pickle.loads(pickle.dumps(e))
    assert (back.path, back.problem, str(back)) == (e.path, e.problem, str(e))
    for bad in ("", "a\x00b"):
        with pytest.raises(ValueError, match="non-empty path"):
            resolve_in_root("/", bad)


def test_a_plain_folder_is_not_read_as_a_checkpoint(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "big.csv").write_text("1,2,3")
    for kwargs, path in (({}, tmp_path / "data"), ({"root": tmp_path}, "data")):
        with pytest.raises(ValueError, match="cannot tell the weight format"):
            load_weights(path, **kwargs)
        with pytest.raises(
            WeightFileError, match="folder that does not hold ol_jax weights"
        ):
            load_weights(path, format="custom", **kwargs)
        with pytest.raises(WeightFileError, match="single file"):
            load_weights(path, format="safetensors", **kwargs)
