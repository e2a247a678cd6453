"""The ``handles`` command. Each sub-command lives in its own module of this package.

A sub-command module defines ``register(subparsers)`` which adds its parser and sets
``func`` (a callable taking the parsed ``argparse.Namespace`` and returning an exit code).
Modules must import heavy libraries (torch models, diffusers, mitsuba) inside ``func``, not at
import time, so that ``handles --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time

from diffusion_handles.errors import Cancelled, HandlesError

# Sub-command modules, in the order ``handles --help`` lists them. A module that is not
# present in this installation is skipped.
COMMANDS = ["demo", "preview", "edit", "remove", "animate", "batch", "depth", "segment", "world", "bench", "serve"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit code 2, no usage dump
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="handles", description="3D object edits on images with Diffusion Handles.")
    from diffusion_handles import __version__

    parser.add_argument("--version", action="version", version=f"diffusion-handles {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"diffusion_handles.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"diffusion_handles.cli.{name}":
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    started_at = time.perf_counter()  # the closing lines state the whole command's wall time
    parser = build_parser()
    args = parser.parse_args(argv)
    args.started_at = started_at
    try:
        return int(args.func(args) or 0)
    except (KeyboardInterrupt, Cancelled):  # Ctrl-C: one line, status 130; outputs are written whole or not at all
        from diffusion_handles.cli.common import interrupted_line

        print(interrupted_line(args), file=sys.stderr)
        return 130
    except HandlesError as e:
        print(f"handles {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
