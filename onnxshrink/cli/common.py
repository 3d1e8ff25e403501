"""The ``onnxshrink`` command group and what every command shares: error handling, logging, units."""

from __future__ import annotations

import logging
import os
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

import click

from onnxshrink import progress
from onnxshrink._version import __version__
from onnxshrink.errors import ShrinkError

F = TypeVar("F", bound=Callable[..., Any])

PROVIDER = click.Choice(["auto", "cpu", "cuda"])


def executor_options(*, executor_help: str, workers_help: str) -> Callable[[F], F]:
    """The executor options ``run`` and ``auto`` share, each command saying what runs where.

    ``--executor``, ``--workers``, ``--ray-address`` and ``--gpus-per-worker``, in that order in ``--help``.
    """
    options = [
        click.option(
            "--executor",
            type=click.Choice(["local", "ray"]),
            default="local",
            show_default=True,
            help=executor_help,
        ),
        click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True, help=workers_help),
        click.option(
            "--ray-address",
            default="auto",
            show_default=True,
            metavar="ADDR",
            help="With --executor ray: auto (this machine's cluster), HOST:PORT, or local (start one here).",
        ),
        click.option(
            "--gpus-per-worker",
            type=click.FloatRange(min=0),
            default=None,
            help="With --executor ray: GPUs each worker declares. [default: 1 with --provider cuda and GPUs, else 0]",
        ),
    ]

    def decorate(func: F) -> F:
        for option in reversed(options):  # listed in --help in this order
            func = option(func)
        return func

    return decorate


class State:
    """Options of the command group that every command reads (``--debug``)."""

    debug = False


def _configure_logging(verbose: int, debug: bool) -> None:
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    # onnx-ir logs recoverable oddities of input models as warnings; we report our own.
    logging.getLogger("onnx_ir").setLevel(logging.DEBUG if debug else logging.ERROR)


def _fail(error: BaseException, code: int) -> None:
    if State.debug:
        traceback.print_exception(error)
    message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    click.echo(f"onnxshrink: error: {message}", err=True)
    sys.exit(code)


def _quiet_broken_pipe() -> None:
    """The reader of our stdout left (``onnxshrink passes | head -1``): stop quietly.

    Python's documented recipe: point stdout at devnull so the flush at exit cannot fail again.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    sys.exit(1)


def guarded(func: F) -> F:
    """Turns onnxshrink errors into one stderr line and the documented exit code."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ShrinkError as error:
            _fail(error, error.exit_code)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except BrokenPipeError:
            _quiet_broken_pipe()
        except KeyboardInterrupt:
            _fail(RuntimeError("interrupted; nothing written"), 130)
        except Exception as error:  # an onnxshrink bug: still one line, traceback with --debug
            _fail(RuntimeError(f"internal error: {type(error).__name__}: {error} (rerun with --debug)"), 1)

    wrapper.__name__ = func.__name__
    wrapper.__doc__ = func.__doc__
    return wrapper  # type: ignore[return-value]


class _Line:
    """One running task drawn as one rewritten terminal line: label, done/total, elapsed, time left."""

    def __init__(self, label: str, total: int | None) -> None:
        self.label, self.total, self.done = label, total, 0
        self.started = self.drawn = time.monotonic()
        self.draw()

    def advance(self, count: int = 1) -> None:
        self.done += count
        # A redraw per trial would flood slow terminals; ten a second is smooth enough.
        if time.monotonic() - self.drawn >= 0.1:
            self.draw()

    def draw(self) -> None:
        self.drawn = time.monotonic()
        elapsed = self.drawn - self.started
        text = f"{self.label}  {_clock(elapsed)}"
        if self.total:
            done = min(self.done, self.total)
            text = f"{self.label}  {done}/{self.total}  {_clock(elapsed)}"
            if 0 < done < self.total:
                text += f", ~{_clock(elapsed * (self.total - done) / done)} left"
        # \r and erase-to-end rewrite the line in place; stderr so stdout stays the result.
        sys.stderr.write(f"\r\x1b[K{text}")
        sys.stderr.flush()


class _Terminal(logging.Filter):
    """The reporter the command line installs when stderr is a terminal.

    Also a filter on the log handler: a log line (``-v``) first erases the progress line, which
    the next ``advance`` draws again below it, so the two never share a line.
    """

    def start(self, label: str, total: int | None) -> progress.Step:
        return _Line(label, total)

    def finish(self, step: progress.Step) -> None:
        sys.stderr.write("\r\x1b[K")  # the line goes away: logs and results follow cleanly
        sys.stderr.flush()

    def filter(self, record: logging.LogRecord) -> bool:
        sys.stderr.write("\r\x1b[K")
        return True


def _clock(seconds: float) -> str:
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes}m{rest:02d}s" if minutes else f"{rest}s"


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="onnxshrink")
@click.option("-v", "--verbose", count=True, help="Log what each step does.")
@click.option("--debug", is_flag=True, help="Debug logs and full tracebacks.")
def main(verbose: int, debug: bool) -> None:
    """onnxshrink: make ONNX models smaller and faster, numerics checked with onnxruntime."""
    State.debug = debug
    _configure_logging(verbose, debug)
    # Progress only for a person watching: pipes and files get the results and logs alone.
    terminal = _Terminal() if sys.stderr.isatty() else None
    progress.install(terminal)
    if terminal is not None:
        for handler in logging.getLogger().handlers:
            handler.addFilter(terminal)


def human_bytes(count: int) -> str:
    """``count`` bytes in B, KB, MB or GB (powers of 1000), as the run summary prints them."""
    size = float(count)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{count} B"
