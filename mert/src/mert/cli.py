"""Command line of the mert project: `mert <subcommand> --help`."""

from __future__ import annotations

import argparse
import sys

SUBCOMMANDS = "train extract probe convert prepare demo".split()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mert", description="MERT: self-supervised music audio encoder.")
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(SUBCOMMANDS) + "}")
    for name in SUBCOMMANDS:
        sub.add_parser(name, help=f"{name} (not implemented yet)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    print(f"mert {args.command}: not implemented yet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
