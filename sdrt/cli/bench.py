"""`sdrt bench`: its arguments and its run live with the harness (sdrt.benchmarks.command)."""
from __future__ import annotations


def add_parser(commands, name: str, summary: str) -> None:
    from sdrt.benchmarks import command

    command.add_parser(commands)


def run(args, argv: list[str]) -> int:
    from sdrt.benchmarks import command

    return command.run(args, argv)
