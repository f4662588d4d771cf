"""What stvideo says while it works, through standard `logging`: INFO by default, WARNING
with `stvideo --quiet` (no progress either), DEBUG with `--verbose` (and the libraries' own
INFO lines). The level travels to the processes a command starts (Ray jobs, workers) in
STVIDEO_LOG_LEVEL. Lines go through tqdm, so a live progress bar is not torn by them."""

from __future__ import annotations

import logging
import os
import sys

from tqdm import tqdm

LEVEL_ENV = "STVIDEO_LOG_LEVEL"
LEVELS = {"quiet": logging.WARNING, "normal": logging.INFO, "verbose": logging.DEBUG}
# libraries whose INFO lines (Ray Data's execution plans, MLflow's downloads) only --verbose shows
CHATTY = ("ray", "ray.data", "mlflow", "urllib3", "filelock")
# where Ray Data logs a failed task's error (with its stack) as it aborts: the stage says it
# once, in its own line naming the file, and keeps the traceback; --verbose shows both
RAY_DATA_ECHOES = ("ray.data._internal.execution.streaming_executor_state", "ray.data.exceptions")


def _not_an_echo(record: logging.LogRecord) -> bool:
    return record.levelno < logging.ERROR or level() <= logging.DEBUG


class _ThroughTqdm(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:
            self.handleError(record)


def level() -> int:
    return LEVELS.get(os.environ.get(LEVEL_ENV, "normal"), logging.INFO)


def configure(verbosity: str | None = None) -> None:
    """Set the level for this process and the ones it starts; `verbosity`: quiet, normal or
    verbose (None: what STVIDEO_LOG_LEVEL says, else normal)."""
    if verbosity is not None:
        os.environ[LEVEL_ENV] = verbosity
    root = logging.getLogger("stvideo")
    if not any(isinstance(handler, _ThroughTqdm) for handler in root.handlers):
        handler = _ThroughTqdm()
        handler.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(handler)
        root.propagate = False
    root.setLevel(level())
    for name in CHATTY:
        logging.getLogger(name).setLevel(logging.DEBUG if level() <= logging.DEBUG else logging.WARNING)
    for name in RAY_DATA_ECHOES:
        echoes = logging.getLogger(name)
        if _not_an_echo not in echoes.filters:
            echoes.addFilter(_not_an_echo)


def first_line(err: BaseException, limit: int = 200) -> str:
    """An error's message as one line for a log or a reason (its type's name when it has none)."""
    text = str(err).strip()
    return text.splitlines()[0][:limit] if text else type(err).__name__


def get(name: str) -> logging.Logger:
    """The logger of one part of stvideo (`stvideo.<name>`), set up on first use."""
    logger = logging.getLogger(f"stvideo.{name}")
    if not logging.getLogger("stvideo").handlers:
        configure()
    return logger
