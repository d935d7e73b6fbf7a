"""Run the API server: check the bind address, build the service and app, serve with uvicorn."""

from __future__ import annotations

import logging
import sys

import uvicorn

from edgecap.config import Settings
from edgecap.logs import LogSetup
from edgecap.registry import Registry
from edgecap.runtime.service import TaskService
from edgecap.server.app import create_app, uvicorn_options
from edgecap.server.auth import ApiKeys, check_bind

logger = logging.getLogger(__name__)


def serve(settings: Settings, *, allow_unauthenticated_public_bind: bool = False) -> None:
    """Serve the API on ``settings.host:settings.port`` until interrupted.

    Refuses (InvalidParameter) to listen on a non-loopback address without API keys unless
    ``allow_unauthenticated_public_bind``; then it warns loudly on stderr.
    """
    LogSetup.of(settings).apply()
    warning = check_bind(
        settings.host,
        ApiKeys(settings.api_keys),
        allow_unauthenticated=allow_unauthenticated_public_bind,
    )
    if warning:
        print(f"\n{'!' * 78}\n{warning}\n{'!' * 78}\n", file=sys.stderr, flush=True)
    app = create_app(settings, TaskService(settings), Registry(settings))
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,  # ours, set up above (uvicorn's would replace it)
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=5,
        **uvicorn_options(settings),
    )
