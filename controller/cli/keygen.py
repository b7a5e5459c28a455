"""Create a new shared key file (mode 0600) and print its key id.

    shoal keygen PATH

Copy the file to every agent (and monitoring host) that should accept it; the key
id, not the key, is what logs and the audit trail show.
"""

from __future__ import annotations

import argparse

from shoal.controller.term.display import Display



def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", metavar="PATH", help="where to write the key (must not exist)")


def run(args: argparse.Namespace, words: list[str], display: Display) -> int:
    from shoal.hostio.keyfile import write_key_file

    key = write_key_file(args.path)
    display.print(key.key_id)
    return 0
