"""autoeff's logging: the standard `logging` module under the `autoeff` logger, and quiet third parties.

The library only logs (`logger.info("trial 12 COMPLETE ...")`); what is shown is the application's choice.
The CLI calls `configure`: `-q` shows warnings and errors only, the default shows one line per finished trial
when the output is not a terminal (on a terminal the progress bar shows it), `-v` shows them always and
`-vv` adds debug lines; `--log-file PATH` keeps everything from INFO (DEBUG with `-vv`) in a file. From
Python, attach a handler to `logging.getLogger("autoeff")` as for any library.

`quiet_third_party()` silences the progress bars and the warnings diffusers, transformers and Optuna print
while a pipeline loads (they are noise to a user of `autoeff.load`), unless the autoeff logger is at DEBUG.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger("autoeff")
_HANDLER_TAG = "_autoeff_handler"


class _Plain(logging.Formatter):
    """`message` for information, `warning: message` / `error: message` above it (the CLI's own style)."""

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        return text if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {text}"


def configure(verbosity: int = 0, log_file: str | Path | None = None, stream_is_tty: bool | None = None) -> None:
    """Handlers for the `autoeff` logger: stderr at a level from `verbosity` (-1 quiet, 0 default, 1 verbose,
    2 debug), and `log_file` at INFO (DEBUG at 2). At 0, per-trial lines go to stderr only off a terminal."""
    tty = sys.stderr.isatty() if stream_is_tty is None else stream_is_tty
    for h in [h for h in logger.handlers if getattr(h, _HANDLER_TAG, False)]:
        logger.removeHandler(h)
        h.close()
    level = {-1: logging.WARNING, 0: logging.WARNING if tty else logging.INFO, 1: logging.INFO}.get(
        verbosity, logging.DEBUG if verbosity >= 2 else logging.WARNING)
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(level)
    console.setFormatter(_Plain())
    setattr(console, _HANDLER_TAG, True)
    logger.addHandler(console)
    lowest = level
    if log_file is not None:
        file_level = logging.DEBUG if verbosity >= 2 else logging.INFO
        handler = logging.FileHandler(str(log_file), encoding="utf-8")
        handler.setLevel(file_level)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        setattr(handler, _HANDLER_TAG, True)
        logger.addHandler(handler)
        lowest = min(lowest, file_level)
    logger.setLevel(lowest)
    logger.propagate = False


@contextlib.contextmanager
def quiet_third_party() -> Iterator[None]:
    """No progress bars or warnings from diffusers, transformers or Optuna in the block (unless autoeff logs at
    DEBUG, when a user wants to see everything)."""
    if logger.isEnabledFor(logging.DEBUG):
        yield
        return
    import diffusers.utils.logging as dlog  # lazy: heavy; the CLI imports this module before torch
    import transformers.utils.logging as tlog

    bars, d_level, t_level = dlog.is_progress_bar_enabled(), dlog.get_verbosity(), tlog.get_verbosity()
    dlog.disable_progress_bar()
    dlog.set_verbosity_error()
    tlog.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        dlog.set_verbosity(d_level)
        tlog.set_verbosity(t_level)
        if bars:
            dlog.enable_progress_bar()


__all__ = ["logger", "configure", "quiet_third_party"]
