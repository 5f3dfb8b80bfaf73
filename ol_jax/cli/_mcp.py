"""``ol-jax mcp``: a :class:`~ol_jax.learners.BufferedLearner` behind MCP tools.

The Model Context Protocol server of the buffered learner, built on the official
``mcp`` SDK (``MCPServer``), over stdio or streamable HTTP on 127.0.0.1. Its tools
are ``load_weights``, ``save_weights``, ``enable_learning``, ``disable_learning``,
``add_training_example``, ``get_learning_stats``, ``set_learning_rate``,
``force_update`` and ``generate``.

Every tool's arguments are checked against its JSON schema (generated from the
annotated signature, so a negative learning rate or an unknown format is refused
before the tool runs), and every failure comes back as an MCP tool error
(``isError: true`` with the message); the server keeps serving. File paths name
files inside one allowed folder: anything outside it (``../`` or an absolute path
elsewhere), the folder itself and any path through a symlink are refused, and
every file is opened through descriptors of the folders checked (see
:func:`ol_jax.models.save_weights` with ``root=``), so a folder swapped for a
symlink mid-call cannot redirect a read or a write. ``save_weights`` never
deletes or replaces what it did not write: an existing path needs
``overwrite: true`` and weights of the same format there, and a folder is never
replaced.

Run it with ``ol-jax mcp --root DIR`` (stdio) or ``ol-jax mcp --transport http
--port 8765``; ``mcp_main(argv)`` is the entry point.

References:
    Anthropic, `Model Context Protocol specification
    <https://modelcontextprotocol.io/specification>`_, 2024.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import Field

__all__ = ["build_mcp_server", "mcp_main", "resolve_in_root"]

LoadFormat = Literal["safetensors", "gguf", "binary", "custom", "ol_jax"]
SaveFormat = Literal["safetensors", "binary", "custom", "ol_jax"]


def resolve_in_root(root: str | os.PathLike[str], file_path: str) -> str:
    """:func:`ol_jax.models.resolve_in_root`: ``file_path`` checked inside ``root``.

    The check lives beside the code that opens the files; imported on call so
    that ``ol-jax mcp --help`` does not load JAX.
    """
    from ol_jax.models import resolve_in_root as resolve

    return resolve(root, file_path)


def build_mcp_server(learner: Any, *, root: str | os.PathLike[str], name="ol-jax"):
    """An ``MCPServer`` whose tools drive ``learner``.

    Args:
      learner: a :class:`~ol_jax.learners.BufferedLearner`.
      root: the only folder ``load_weights`` / ``save_weights`` may touch.
      name: the server name reported to clients.

    Returns:
      The ``mcp.server.mcpserver.MCPServer`` (call ``.run("stdio")``).
    """
    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.exceptions import ToolError

    root = os.path.realpath(os.fspath(root))
    if not os.path.isdir(root):
        raise ValueError(f"root must be an existing folder, got {root}")
    server = MCPServer(
        name,
        instructions="A language model that learns online from training examples.",
        version=_package_version(),
    )

    def reply(message: str, **extra: Any) -> dict[str, Any]:
        return {
            "success": True,
            "message": message,
            **extra,
            "stats": learner.stats().to_dict(),
        }

    @server.tool()
    def load_weights(
        file_path: Annotated[str, Field(min_length=1, description="weights file")],
        format: Annotated[
            LoadFormat | None,
            Field(description="weight format; default: from the file name"),
        ] = None,
    ) -> dict[str, Any]:
        """Load pre-trained weights from a file in the allowed folder."""
        try:
            count = learner.load_weights(file_path, format=format, root=root)
        except ValueError as e:  # WeightFileError names the file and the problem
            raise ToolError(str(e)) from e
        return reply(f"Loaded {count} tensors from {file_path}", tensors=count)

    @server.tool()
    def save_weights(
        file_path: Annotated[str, Field(min_length=1, description="file to write")],
        format: Annotated[
            SaveFormat, Field(description="weight format (custom = ol_jax/Orbax)")
        ] = "custom",
        overwrite: Annotated[
            bool,
            Field(
                description="replace weights of the same format saved at file_path "
                "before (a folder is never replaced)"
            ),
        ] = False,
    ) -> dict[str, Any]:
        """Save the current model weights to a new file in the allowed folder."""
        try:
            learner.save_weights(
                file_path, format=format, overwrite=overwrite, root=root
            )
        except ValueError as e:
            raise ToolError(str(e)) from e
        return reply(f"Saved weights to {file_path}", file_path=file_path)

    @server.tool()
    def enable_learning() -> dict[str, Any]:
        """Enable continuous online learning."""
        learner.enable()
        return reply("Online learning enabled")

    @server.tool()
    def disable_learning() -> dict[str, Any]:
        """Disable online learning (examples are still buffered)."""
        learner.disable()
        return reply("Online learning disabled")

    @server.tool()
    def add_training_example(
        input: Annotated[str, Field(min_length=1, description="input text")],
        target: Annotated[
            str | None,
            Field(min_length=1, description="target text; omit for self-supervised"),
        ] = None,
        weight: Annotated[
            float, Field(ge=0, allow_inf_nan=False, description="example weight")
        ] = 1.0,
    ) -> dict[str, Any]:
        """Add a training example for the model to learn from.

        An example longer than the server's --max-length tokens keeps its end
        (where the target is); the reply then says how many tokens were cut.
        """
        try:
            length = learner.example_length(input, target)
            learner.add_example(input, target, weight=weight)
        except ValueError as e:
            raise ToolError(str(e)) from e
        limit = learner.config.max_length
        if length <= limit:
            return reply("Training example added")
        cut = length - limit
        return reply(
            f"Training example added, truncated: it is {length} tokens, over the "
            f"limit of {limit} (--max-length), so its first {cut} tokens (from the "
            "start of the input) were cut and the last "
            f"{limit} kept",
            truncated_tokens=cut,
        )

    @server.tool()
    def get_learning_stats() -> dict[str, Any]:
        """Get statistics about online learning."""
        return reply("Learning statistics retrieved")

    @server.tool()
    def set_learning_rate(
        learning_rate: Annotated[
            float, Field(gt=0, allow_inf_nan=False, description="new learning rate")
        ],
    ) -> dict[str, Any]:
        """Adjust the learning rate (takes effect at the next update)."""
        if not math.isfinite(learning_rate):
            raise ToolError(f"learning_rate must be finite, got {learning_rate}")
        learner.set_learning_rate(learning_rate)
        return reply(f"Learning rate set to {learning_rate}")

    @server.tool()
    def force_update(
        force: Annotated[
            bool,
            Field(description="update even while learning is disabled"),
        ] = False,
    ) -> dict[str, Any]:
        """Force an immediate weight update using the buffered examples.

        While learning is disabled this is refused unless ``force`` is true.
        """
        if not learner.enabled and not force:
            raise ToolError(
                "learning is disabled, so no update was made: call enable_learning "
                "first, or force_update with force: true to update anyway"
            )
        try:
            done = learner.force_update()
        except (RuntimeError, TimeoutError) as e:
            raise ToolError(f"update failed: {e}") from e
        if not done:
            raise ToolError("the buffer is empty: add training examples first")
        return reply("Weights updated")

    @server.tool()
    def generate(
        prompt: Annotated[str, Field(description="prompt text")],
        max_new_tokens: Annotated[int, Field(ge=1, le=512)] = 32,
    ) -> dict[str, Any]:
        """Continue a prompt greedily with the current weights."""
        out = learner.generate(prompt, max_new_tokens=max_new_tokens)
        return {
            "success": True,
            "text": out.text,
            "token_ids": out.token_ids,
            "version": out.version,
        }

    return server


def _package_version() -> str:
    """The installed package's version (the source tree's when not installed)."""
    from importlib import metadata

    try:
        return metadata.version("ol_jax")
    except metadata.PackageNotFoundError:
        import ol_jax

        return ol_jax.__version__


def _parser() -> argparse.ArgumentParser:
    from ol_jax.cli._help import HelpFormatter

    parser = argparse.ArgumentParser(
        prog="ol-jax mcp",
        description="Serves a language model that learns online as Model Context "
        "Protocol tools: add training examples, and every --update-frequency of "
        "them (or on force_update) its weights are updated in the background "
        "while generate keeps answering; weights are saved and loaded inside "
        "--root only. The model is compiled before the server starts answering.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--root", default=".", help="the only folder weight files may be read/written"
    )
    parser.add_argument(
        "--transport",
        choices=["stdio", "http"],
        default="stdio",
        help="stdio (for a client that starts the server) or streamable HTTP on "
        "127.0.0.1",
    )
    parser.add_argument("--port", type=int, default=8765, help="HTTP port")
    parser.add_argument(
        "--learning-rate", type=float, default=1e-3, help="learning rate of updates"
    )
    parser.add_argument(
        "--update-frequency",
        type=int,
        default=10,
        help="examples added per automatic update",
    )
    parser.add_argument(
        "--buffer-size", type=int, default=1000, help="examples kept for updates"
    )
    parser.add_argument(
        "--optimizer",
        choices=["adam", "adamw", "sgd"],
        default="adam",
        help="update rule",
    )
    parser.add_argument(
        "--loss",
        choices=["cross_entropy", "mse", "contrastive"],
        default="cross_entropy",
        help="training loss on the examples",
    )
    parser.add_argument(
        "--max-length",
        type=int,
        default=64,
        help="tokens per example at most; a longer one keeps its end",
    )
    parser.add_argument(
        "--model",
        default="smollm2-135m",
        help="'smollm2-135m' (the pretrained SmolLM2-135M-Instruct), a .gguf file "
        "or a Hugging Face folder; or 'byte-llama', a fresh untrained ~1M-parameter "
        "byte-level Llama (fast to compile, for tests: it generates noise until "
        "trained at length)",
    )
    parser.add_argument(
        "--layers",
        type=int,
        default=4,
        help="layers of the byte-level Llama (--model byte-llama only)",
    )
    parser.add_argument(
        "--hidden-size",
        type=int,
        default=128,
        help="width of the byte-level Llama (--model byte-llama only)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument(
        "--checkpoint-dir",
        default=None,
        help="networks folder for versioned checkpoints (default: none)",
    )
    parser.add_argument(
        "--checkpoint-every", type=int, default=100, help="updates per checkpoint"
    )
    parser.add_argument(
        "--network-id", default="buffered-mcp", help="network name in the store"
    )
    return parser


def mcp_main(argv: Sequence[str] | None = None) -> int:
    """Runs the MCP server until the client disconnects (stdio) or it is stopped.

    The model is the pretrained SmolLM2-135M-Instruct (``--model``: another
    pretrained one, or ``byte-llama``, a fresh byte-level Llama from
    :func:`~ol_jax.learners.byte_llama_config`), trained by a
    :class:`~ol_jax.learners.BufferedLearner`, with its update and generation
    programs compiled before the server answers.

    Args:
      argv: command-line arguments after ``mcp`` (see ``--help``).

    Returns:
      The exit status.
    """
    args = _parser().parse_args(argv)
    import jax

    from ol_jax.core import enable_compilation_cache
    from ol_jax.learners import BufferedLearner, LearningConfig, byte_llama_config
    from ol_jax.models import Llama, load_llama
    from ol_jax.store import BaseNetworkConfig, RunStore

    enable_compilation_cache()
    config = LearningConfig(
        buffer_size=args.buffer_size,
        update_frequency=args.update_frequency,
        learning_rate=args.learning_rate,
        optimizer=args.optimizer,
        loss=args.loss,
        max_length=args.max_length,
        checkpoint_frequency=args.checkpoint_every,
    )
    store = None
    if args.checkpoint_dir is not None:
        store = RunStore(
            args.checkpoint_dir, config=BaseNetworkConfig(network_id=args.network_id)
        )
    if args.model == "byte-llama":
        heads = max(1, args.hidden_size // 32)
        model = Llama(
            byte_llama_config(
                hidden_size=args.hidden_size,
                intermediate_size=3 * args.hidden_size,
                num_hidden_layers=args.layers,
                num_attention_heads=heads,
            ),
            key=jax.random.key(args.seed),
        )
        tokenizer = None
    else:
        model, tokenizer = load_llama(args.model)
    learner = BufferedLearner.from_llama(
        model,
        tokenizer=tokenizer,
        config=config,
        key=jax.random.key(args.seed + 1),
        store=store,
    )
    _precompile(learner)
    server = build_mcp_server(learner, root=args.root)
    try:
        if args.transport == "stdio":
            server.run("stdio")
        else:
            server.run("streamable-http", host="127.0.0.1", port=args.port)
    finally:
        learner.close()
        if store is not None:
            store.close()
    return 0


def _precompile(learner: Any) -> None:
    """Compiles the update and generation programs before the server is ready.

    Messages go to stderr: stdout is the stdio transport's channel.
    """
    import sys
    import time

    t0 = time.perf_counter()
    print("ol-jax mcp: compiling the update programs...", file=sys.stderr, flush=True)
    n = learner.precompile()
    learner.generate("Hello", max_new_tokens=32)
    print(
        f"ol-jax mcp: compiled {n} update programs and generation in "
        f"{time.perf_counter() - t0:.1f} s; ready",
        file=sys.stderr,
        flush=True,
    )


if __name__ == "__main__":
    raise SystemExit(mcp_main())
