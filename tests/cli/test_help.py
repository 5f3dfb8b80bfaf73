"""Every ``ol-jax`` command's --help: each option explained, defaults shown."""

import argparse

import pytest

from ol_jax.cli._chat import build_parser as chat_parser
from ol_jax.cli._help import HelpFormatter
from ol_jax.cli._main import build_parser, main
from ol_jax.cli._mcp import _parser as mcp_parser
from ol_jax.cli._proxy import _parser as proxy_parser
from ol_jax.cli._soak import _soak_parser


def _demo_parser():
    sub = next(
        a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)
    )
    return sub.choices["demo"]


PARSERS = {
    "demo": _demo_parser,
    "chat": chat_parser,
    "mcp": mcp_parser,
    "proxy": proxy_parser,
    "soak": _soak_parser,
}


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_every_option_is_explained_with_its_default(name):
    parser = PARSERS[name]()
    assert issubclass(parser.formatter_class, HelpFormatter)
    assert parser.description
    text = parser.format_help()
    assert "seed 00" not in text
    for action in parser._actions:
        assert action.help, f"{name} {action.option_strings} has no help"
        if action.default not in (None, False, argparse.SUPPRESS):
            assert f"(default: {action.default})" in " ".join(text.split()), (
                name,
                action.dest,
            )


@pytest.mark.parametrize("name", ["demo", "chat", "mcp", "proxy", "soak", "report"])
def test_help_of_each_command_exits_0(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: ol-jax {name}") and "seed 00" not in out


def test_top_level_help_describes_each_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "seed 00" not in out
    for name in ("demo", "chat", "mcp", "proxy", "soak", "report"):
        assert f" {name} " in out
    assert "learns from every turn" in out
