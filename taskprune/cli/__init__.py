"""Command-line interface: parses arguments, calls the library, renders progress and tables.

One module per command group, each with its ``register(command)`` beside its ``run(args)``: :mod:`.compress`,
:mod:`.pipeline` (score, plan, prune, eval, info), :mod:`.demo`, :mod:`.experiments` (sweep, report),
:mod:`.export` (GGUF), :mod:`.serve`, :mod:`.train` (finetune, init-seq2seq); shared flags in :mod:`.options`.

Every user mistake surfaces as ``taskprune: error: <one line>`` with exit code 2, before any long computation:
malformed flag values while the arguments are parsed (:mod:`taskprune.validate` behind every numeric flag),
outputs by :func:`taskprune.files.check_writable` first thing in every command, broken inputs where they are
loaded. Anything unexpected is one line with its type and exit code 1; ``--debug`` or ``TASKPRUNE_DEBUG=1``
shows the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import TaskpruneError
from ..runtime import distributed
from . import compress, demo, experiments, export, pipeline, serve, train
from .inputs import quiet_transformers
from .options import EXIT_USER_ERROR, Parser

EXIT_UNEXPECTED = 1
DEBUG_HINT = "run with TASKPRUNE_DEBUG=1 or --debug for the traceback"
#: commands that share their work across the processes of torchrun / accelerate launch (docs/distributed.md)
DISTRIBUTED_COMMANDS = ("score", "compress", "sweep")
#: the command groups, in the order ``taskprune --help`` lists them
COMMAND_GROUPS = (compress, pipeline, export, demo, experiments, serve, train)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="taskprune",
        description="Compress a multi-task language model for ONE task by attribution-based pruning, without training.",
    )
    debug_help = "on an unexpected error, show its traceback (also TASKPRUNE_DEBUG=1)"
    parser.add_argument("--debug", action="store_true", help=debug_help)
    common = Parser(add_help=False)  # --debug after the command too; SUPPRESS keeps a --debug given before it
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, **kw: Any) -> argparse.ArgumentParser:  # noqa: ANN401
        return commands.add_parser(name, parents=[common], **kw)

    for group in COMMAND_GROUPS:
        group.register(command)
    return parser


def _one_line(text: str, limit: int = 400) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _debug_wanted(args: argparse.Namespace | None) -> bool:
    return bool(getattr(args, "debug", False)) or os.environ.get("TASKPRUNE_DEBUG", "") not in ("", "0")


def report_error(message: str, debug: bool, code: int = EXIT_USER_ERROR) -> int:
    """Print the one error line (in a job of several processes: the first failing rank's, naming it)."""
    distributed.quiet_sigterm(ignore=True)  # the launcher stopping this rank now must not cut its one line, nor add one
    if debug:
        traceback.print_exc()
    if distributed.claim_error_report():
        print(f"taskprune: error: {distributed.current().tag()}{message}", file=sys.stderr, flush=True)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit code: 0, 2 for the user's mistakes, 1 for anything unexpected.

    Under torchrun (several processes) the command joins the job first; whatever fails, the job prints ONE
    ``taskprune: error:`` line (:func:`taskprune.runtime.distributed.claim_error_report`), and every process leaves it.
    """
    parser = build_parser()
    quiet = distributed.launched_world_size() > 1 and distributed.launched_rank() != 0
    try:
        if quiet:  # argument errors are the same on every rank: rank 0 says it
            with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink), contextlib.redirect_stdout(sink):
                args = parser.parse_args(argv)
        else:
            args = parser.parse_args(argv)
    except SystemExit as done:  # --help (0), or a malformed flag value: its one line is already printed (2)
        return done.code if isinstance(done.code, int) else EXIT_USER_ERROR
    debug = _debug_wanted(args)
    try:
        code = _run(args, debug)
    except distributed.Stopped as err:  # the launcher's SIGTERM came while another error was being handled
        code = report_error(str(err), debug, EXIT_UNEXPECTED)
    if distributed.joined():  # a rank of a job: no interpreter teardown (it can abort the rank)
        distributed.leave_process(code)
    return code


def _run(args: argparse.Namespace, debug: bool) -> int:
    """Run the parsed command; every failure becomes one error line and an exit code (:func:`main`)."""
    try:
        if distributed.launched_world_size() > 1:
            if args.command not in DISTRIBUTED_COMMANDS:
                raise TaskpruneError(f"`taskprune {args.command}` runs in one process; under torchrun or accelerate "
                                     f"launch only {', '.join(DISTRIBUTED_COMMANDS)} share their work")
            distributed.init_from_env()
        quiet_transformers()
        func: Callable[[argparse.Namespace], int | None] = args.func
        code = func(args) or 0  # a command returns a non-zero code for work it did but could not finish
        distributed.finish()  # the other ranks wait here for rank 0's writing and printing
    except TaskpruneError as err:
        return report_error(_one_line(str(err), limit=2000), debug)
    except OSError as err:  # permissions, a file where a folder should be, a full disk: the user's to fix
        text = f"{err.strerror or err}: {err.filename or ''}".rstrip(": ")
        return report_error(_one_line(text), debug)
    except distributed.PeerLost as err:
        return report_error(_one_line(str(err)), debug, EXIT_UNEXPECTED)
    except distributed.Stopped as err:
        return report_error(str(err), debug, EXIT_UNEXPECTED)
    except KeyboardInterrupt:
        print("taskprune: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the last resort: one line, never a bare traceback by default
        hint = "" if debug else f" ({DEBUG_HINT})"
        return report_error(f"{type(err).__name__}: {_one_line(str(err))}{hint}", debug, EXIT_UNEXPECTED)
    finally:
        distributed.shutdown()
    return code


__all__ = ["build_parser", "main"]
