"""Logging for the services: one stderr handler, in text or JSON lines, set up with dictConfig.

``edgecap serve`` configures it in the server process (:func:`configure_logging`, from
``log_level`` / ``log_format`` in :class:`edgecap.config.Settings`) and hands the same
:class:`LogSetup` to the engine process, which configures itself before loading a model (a
spawned child inherits no logging setup). The ``edgecap`` and ``uvicorn`` loggers log at the
chosen level; everything else (libraries) at WARNING. The CLI's other commands configure
nothing unless ``--log-level`` is given: their output is the command's, not a log.

A JSON line has ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``process`` (the process
name: ``MainProcess`` or ``edgecap-engine``), ``pid``, ``message`` and, for an exception,
``exception`` (the traceback).
"""

from __future__ import annotations

import json
import logging
import logging.config
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from edgecap.config import Settings

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
LogFormat = Literal["text", "json"]
LOG_LEVELS: tuple[LogLevel, ...] = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s [%(processName)s] %(name)s: %(message)s"
OUR_LOGGERS = ("edgecap", "uvicorn")  # at the chosen level; the rest at WARNING


class JsonFormatter(logging.Formatter):
    """One JSON object per line (the fields are in the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "process": record.processName,
            "pid": record.process,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def logging_config(level: LogLevel, log_format: LogFormat) -> dict[str, Any]:
    """The dictConfig for ``level`` and ``log_format``."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"text": {"format": TEXT_FORMAT}, "json": {"()": JsonFormatter}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": log_format,
            }
        },
        "root": {"level": "WARNING", "handlers": ["stderr"]},
        "loggers": {name: {"level": level} for name in OUR_LOGGERS},
    }


def configure_logging(level: LogLevel = "INFO", log_format: LogFormat = "text") -> None:
    """Send the process's log records to stderr at ``level``, as text or JSON lines."""
    logging.config.dictConfig(logging_config(level, log_format))


@dataclass(frozen=True)
class LogSetup:
    """How a process logs; picklable, so the engine process can be told at spawn."""

    level: LogLevel = "INFO"
    format: LogFormat = "text"

    @classmethod
    def of(cls, settings: Settings) -> LogSetup:
        return cls(settings.log_level, settings.log_format)

    def apply(self) -> None:
        configure_logging(self.level, self.format)
