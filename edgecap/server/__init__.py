"""The Runware-compatible caption API: ``create_app(settings, service, registry)``, ``serve``.

See docs/api.md for the protocol as implemented and docs/service-seam.md for the contract.
"""

from edgecap.server.app import create_app
from edgecap.server.runner import serve

__all__ = ["create_app", "serve"]
