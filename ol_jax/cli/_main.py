"""``ol-jax``: subcommands dispatch to the learners; no math here."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ol_jax.cli._help import HelpFormatter


def _demo(args: argparse.Namespace) -> int:
    from ol_jax.cli._demo import run_demo

    run_demo(
        root=args.root,
        network_id=args.network,
        personality=args.personality,
        cycles=args.cycles,
        glyphs_per_cycle=args.glyphs_per_cycle,
        eval_samples=args.eval_samples,
        run_id=args.run_id,
    )
    return 0


def _soak(args: argparse.Namespace) -> int:
    from ol_jax.cli._soak import soak_main

    return soak_main(args.rest)


def _mcp(args: argparse.Namespace) -> int:
    from ol_jax.cli._mcp import mcp_main

    return mcp_main(args.rest)


def _report(args: argparse.Namespace) -> int:
    from ol_jax.cli._report import report_main

    return report_main(args.rest)


def _proxy(args: argparse.Namespace) -> int:
    from ol_jax.cli._proxy import proxy_main

    return proxy_main(args.rest)


def _chat(args: argparse.Namespace) -> int:
    from ol_jax.cli._chat import chat_main

    return chat_main(args.rest)


_OWN_PARSERS = {
    "soak": _soak,
    "mcp": _mcp,
    "report": _report,
    "proxy": _proxy,
    "chat": _chat,
}


# One line per subcommand for ``ol-jax --help``, in the user's terms.
_SUMMARIES = {
    "demo": "learn a glyph style from a simulated rater's 1-10 ratings and plot "
    "the scores before and after",
    "chat": "chat in the terminal with a language model that learns from every "
    "turn (facts you state are remembered)",
    "mcp": "serve a language model that learns online as MCP tools (add "
    "examples, update, generate, save and load weights)",
    "proxy": "serve the Anthropic Messages API from a local model that learns "
    "from the answers of a teacher model",
    "soak": "run a routing controller through a simulated day of user feedback "
    "(shift, noise, poisoned bursts) and report how its safety gates held",
    "report": "draw PNG plots of a run's metrics.jsonl",
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``ol-jax`` with every subcommand."""
    from ol_jax.feedback import PERSONALITIES

    parser = argparse.ArgumentParser(
        prog="ol-jax",
        description="Online learning in JAX: weights that change after every "
        "piece of feedback. Each command has its own --help.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help=_SUMMARIES["demo"],
        description="Starts a new run of the glyph network: a small image decoder "
        "whose style vector learns from 1-10 ratings given by a simulated rater "
        "with a taste (a personality), a few glyphs per feedback cycle. Prints "
        "progress and a score table, and writes the plots into the run folder "
        "(<root>/<network>/runs/<run-id>/).",
        formatter_class=HelpFormatter,
    )
    demo.add_argument("--root", default="networks", help="folder of saved networks")
    demo.add_argument("--network", default="glyph-demo", help="network id (folder)")
    demo.add_argument(
        "--personality",
        default="bold",
        choices=list(PERSONALITIES),
        help="the simulated rater's taste",
    )
    demo.add_argument("--cycles", type=int, default=20, help="feedback cycles")
    demo.add_argument(
        "--glyphs-per-cycle", type=int, default=8, help="glyphs rated per cycle"
    )
    demo.add_argument(
        "--eval-samples", type=int, default=64, help="held-out glyphs per evaluation"
    )
    demo.add_argument("--run-id", default=None, help="run id (default: a new id)")
    demo.set_defaults(func=_demo)

    # These parse their own arguments (see their --help).
    for name, func in (
        ("chat", _chat),
        ("mcp", _mcp),
        ("proxy", _proxy),
        ("soak", _soak),
        ("report", _report),
    ):
        p = sub.add_parser(name, help=_SUMMARIES[name], add_help=False)
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(func=func)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ol-jax`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv and argv[0] in _OWN_PARSERS:
        # Subcommands with their own parser get the rest of the line verbatim.
        args = argparse.Namespace(
            command=argv[0], func=_OWN_PARSERS[argv[0]], rest=argv[1:]
        )
    else:
        args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as e:
        print(f"ol-jax {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
