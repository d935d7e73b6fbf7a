"""The OpenAI-compatible endpoint: ``POST /v1/chat/completions`` and ``GET /v1/models``.

It runs on the same server, behind the same keys and limits, through the same task service and
engine as the caption API; see docs/api.md.
"""

from edgecap.server.openai.routes import make_openai_router

__all__ = ["make_openai_router"]
