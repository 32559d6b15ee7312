"""Where and how the logstore logs: a size-bounded file (embedded) or stderr, text or JSON.

The embedded logstore runs in the background with nobody reading its output,
for as long as clients use it: its log file (``Config.logstore_log``) is rotated at
``logging.max_bytes`` keeping ``logging.backups`` old files, and stdout/stderr
follow each rotation so that stray output (a traceback) is bounded too. The
standalone ``woodpecker logstore`` logs to stderr, for its supervisor to keep.
Maintenance repeats its pass every ``retention.interval``; a warning it already
gave is counted, not printed again, for ``logging.repeat_interval`` seconds.
"""

from __future__ import annotations

import datetime
import logging
import logging.handlers
import os
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

import orjson

from woodpecker.config import Config
from woodpecker.private_files import private_opener

TEXT_FORMAT = "%(asctime)s logstore %(levelname)s %(message)s"
REPEAT_MEMORY = 1024  # distinct messages remembered by the repeat filter
RATE_LIMITED_LOGGERS = ("woodpecker.maintenance",)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message[, exception]."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line).decode()


class RotatingLogFile(logging.handlers.RotatingFileHandler):
    """A rotating file created owner-only (0600), with stdout/stderr following each rotation."""

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        super().__init__(path, maxBytes=max_bytes, backupCount=backups, delay=False)
        self._redirect_std_streams()

    def _open(self) -> TextIO:
        return open(
            self.baseFilename,
            "a",
            encoding=self.encoding or "utf-8",
            errors=self.errors,
            opener=private_opener,
        )

    def doRollover(self) -> None:
        super().doRollover()
        self._redirect_std_streams()

    def _redirect_std_streams(self) -> None:
        if self.stream is None:
            return
        sys.stdout.flush()
        sys.stderr.flush()
        for fd in (1, 2):
            os.dup2(self.stream.fileno(), fd)


class RepeatFilter(logging.Filter):
    """Lets a message through once per ``interval``; repeats in between are only counted.

    The next time it is let through it says how many were held back.
    """

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.interval = interval
        self.clock = clock
        self._seen: OrderedDict[str, list[float | int]] = OrderedDict()  # msg -> [shown at, held]

    def filter(self, record: logging.LogRecord) -> bool:
        key = f"{record.levelno}:{record.getMessage()}"
        now = self.clock()
        entry = self._seen.get(key)
        if entry is not None and now - entry[0] < self.interval:
            entry[1] += 1
            return False
        if entry is not None and entry[1]:
            record.msg = f"{record.getMessage()} (repeated {entry[1]} more times since)"
            record.args = None
        self._seen[key] = [now, 0]
        self._seen.move_to_end(key)
        while len(self._seen) > REPEAT_MEMORY:
            self._seen.popitem(last=False)
        return True


def configure_logging(config: Config, log_file: Path | None) -> None:
    """Send the process's log records to ``log_file`` (rotated) or stderr, in the configured
    format, with maintenance warnings rate-limited."""
    handler: logging.Handler
    if log_file is None:
        handler = logging.StreamHandler(sys.stderr)
    else:
        handler = RotatingLogFile(log_file, config.logging.max_bytes, config.logging.backups)
    if config.logging.format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    for name in RATE_LIMITED_LOGGERS:
        logger = logging.getLogger(name)
        for old in [f for f in logger.filters if isinstance(f, RepeatFilter)]:
            logger.removeFilter(old)
        logger.addFilter(RepeatFilter(config.logging.repeat_interval))
