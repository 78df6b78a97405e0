"""`python -m study`: the report's table, trained and written up (subcommands in study/commands)."""

from __future__ import annotations

from training.cli import get_args_parser
from training.cli import main as run_commands

from .commands import grid, report

COMMANDS = {
    "grid": (grid, "run the study's table (or a part) several runs at a time, one progress view"),
    "report": (report, "RESULTS.md and plots from run directories' metrics (the report's table beside ours)"),
}


def main(argv: list[str] | None = None) -> int:
    return run_commands(argv, get_args_parser("python -m study", __doc__, COMMANDS))
