"""Progress bars that fit where they run: a live bar in a terminal; in a job log or CI (no
terminal), one line at most every `STVIDEO_PROGRESS_SECONDS` (default 30) with the count, the
rate and the time left, instead of a line for every redraw; none under `stvideo --quiet`."""

from __future__ import annotations

import logging
import os
import sys
from typing import TextIO

from tqdm import tqdm

from common import logs

SECONDS_ENV = "STVIDEO_PROGRESS_SECONDS"


class _Lines:
    """A stream that turns tqdm's carriage-return redraws into whole lines."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def write(self, text: str) -> None:
        text = text.replace("\r", "")
        if text.strip():
            self.stream.write(text if text.endswith("\n") else text + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(**kwargs) -> tqdm:
    """`tqdm(**kwargs)` for this stream: live on a terminal, else a line every so many seconds."""
    stream = kwargs.pop("file", None) or sys.stderr
    if logs.level() > logging.INFO:  # stvideo --quiet
        return tqdm(file=stream, disable=True, **kwargs)
    if stream.isatty():
        return tqdm(file=stream, **kwargs)
    every = float(os.environ.get(SECONDS_ENV, "30"))
    return tqdm(file=_Lines(stream), mininterval=every, maxinterval=every, ascii=True, **kwargs)
