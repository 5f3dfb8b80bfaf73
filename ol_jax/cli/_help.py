"""The help formatter every ``ol-jax`` command uses."""

from __future__ import annotations

import argparse


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except ``None`` and ``False`` ones.

    Those mean "not given" (a flag off, or a value chosen at run time), which the
    option's own help text describes better than ``(default: None)``.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)
