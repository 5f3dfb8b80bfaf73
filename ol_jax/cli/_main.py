"""``ol-jax``: subcommands dispatch to the learners; no math here."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


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
    from ol_jax.learners.controller import soak_main

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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``ol-jax`` with every subcommand."""
    from ol_jax.feedback import PERSONALITIES

    parser = argparse.ArgumentParser(
        prog="ol-jax",
        description="Online learning in JAX: weights that change after every "
        "piece of feedback.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser(
        "demo",
        help="glyph style learner against the simulated rater (seed 000)",
        description="Runs a new run of the glyph network against a simulated "
        "rater personality and writes plots into the run folder.",
    )
    demo.add_argument("--root", default="networks", help="networks folder")
    demo.add_argument("--network", default="glyph-demo", help="network id")
    demo.add_argument(
        "--personality", default="bold", choices=[p for p in PERSONALITIES]
    )
    demo.add_argument("--cycles", type=int, default=20, help="feedback cycles")
    demo.add_argument(
        "--glyphs-per-cycle", type=int, default=8, help="glyphs rated per cycle"
    )
    demo.add_argument(
        "--eval-samples", type=int, default=64, help="held-out glyphs per evaluation"
    )
    demo.add_argument("--run-id", default=None, help="run id (default: new)")
    demo.set_defaults(func=_demo)

    # These parse their own arguments (see their --help).
    for name, func, text in (
        ("soak", _soak, "controller-only lifelong learner soak test (seed 003)"),
        ("mcp", _mcp, "MCP server over a buffered online learner (seed 004)"),
        ("report", _report, "PNG plots of a run's metrics.jsonl (seed 001)"),
        ("proxy", _proxy, "Anthropic Messages API proxy that learns (seed 002)"),
        ("chat", _chat, "terminal chat whose LLM learns after every turn (seed 001)"),
    ):
        p = sub.add_parser(name, help=text, add_help=False)
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
