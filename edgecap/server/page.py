"""The web page (``GET /``) and the small JSON endpoints it reads.

- ``GET /`` — the page (or its kiosk layout), under a strict Content-Security-Policy: only
  this origin's scripts, styles and connections; images also from ``blob:`` and ``data:``.
- ``GET /web/{name}`` — its script, style sheet and icon, shipped in ``edgecap/web/``.
- ``GET /v1/defaults`` — the controls' defaults and limits, from the server's Settings.
- ``GET /v1/status`` — the model (and whether its weights are random), the backend the engine
  process runs on, the queue. Needs the API key when keys are configured.
- ``GET /v1/image-tokens?width=W&height=H[&maxPixels=P]`` — the size an image is resized to
  and the image tokens it costs, by the server's own rule (``images.smart_resize``).
"""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from edgecap.config import MAX_TOKENS_LIMIT, PIXELS_PER_TOKEN
from edgecap.errors import EdgecapError, InvalidParameter, MediaNotFound
from edgecap.inputs.images import pixel_budget, smart_resize
from edgecap.protocol import Reply
from edgecap.server.auth import bearer_key
from edgecap.server.handlers import Context
from edgecap.server.schema import MAX_PROMPT_CHARS

CSP = (
    "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; "
    "script-src 'self'; style-src 'self'; connect-src 'self'; object-src 'none'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
# The files under edgecap/web/ that are served, and their types: nothing else is.
ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "icon.svg": "image/svg+xml",
}
MAX_SIDE = 1_000_000  # pixels; more is not an image anyone sends
MAX_BUDGET = 10**9  # maxPixels beyond this is clamped to the ceiling anyway


def make_page_router(ctx: Context) -> APIRouter:
    router = APIRouter()
    assets = {name: (resources.files("edgecap.web") / name).read_bytes() for name in ASSETS}

    @router.get("/", summary="The web page", include_in_schema=False)
    async def page() -> Response:
        return _asset(assets, "index.html")

    @router.get("/web/{name}", summary="The web page's script, style and icon")
    async def asset(name: str) -> Response:
        if name not in assets:
            return _error(MediaNotFound(f"The page has no file {name[:60]!r}.", parameter="name"))
        return _asset(assets, name)

    @router.get("/v1/defaults", summary="The web page's defaults and limits")
    async def defaults() -> dict[str, object]:
        s = ctx.settings
        return {
            "maxTokens": s.max_tokens,
            "maxTokensLimit": MAX_TOKENS_LIMIT,
            "maxPixels": s.max_pixels,
            "minPixels": s.min_pixels,
            "maxPixelsCeiling": s.max_pixels_ceiling,
            "pixelsPerToken": PIXELS_PER_TOKEN,
            "maxImageBytes": s.max_image_bytes,
            "maxPromptChars": MAX_PROMPT_CHARS,
            "defaultPrompt": s.default_prompt,
            "keyRequired": ctx.keys.required,
            "kiosk": {"enabled": s.kiosk, "prompt": s.kiosk_prompt, "idleSeconds": s.kiosk_idle_s},
        }

    @router.get("/v1/status", summary="Model, backend and queue (for the page's status strip)")
    async def status(request: Request) -> JSONResponse:
        try:
            ctx.keys.check(bearer_key(request.headers.get("authorization")))
        except EdgecapError as exc:
            return _error(exc)
        return JSONResponse(await run_in_threadpool(_status, ctx))

    @router.get("/v1/image-tokens", summary="The resized size and image tokens of an image")
    async def image_tokens(request: Request) -> JSONResponse:
        try:
            return JSONResponse(_image_tokens(ctx, request.query_params))
        except EdgecapError as exc:
            return _error(exc)

    return router


def _asset(assets: dict[str, bytes], name: str) -> Response:
    return Response(assets[name], media_type=ASSETS[name], headers=PAGE_HEADERS)


def _error(exc: EdgecapError) -> JSONResponse:
    reply = Reply.of_error(exc, task_type=None, task_uuid=None)
    return JSONResponse(reply.body(), status_code=reply.status)


def _status(ctx: Context) -> dict[str, object]:
    service = ctx.service
    model: dict[str, object]
    try:
        files = ctx.registry.resolve(ctx.settings.model)
        model = {"id": files.id, "randomWeights": files.random_weights}
    except EdgecapError as exc:
        model = {"id": None, "randomWeights": None, "problem": exc.message}
    info = service.engine_info()
    backend = None if info is None else {"name": info.backend, "gpuOffload": info.gpu_offload}
    return {
        "model": model,
        "backend": backend,
        "ready": service.ready,
        "queue": {"waiting": service.queue_depth(), "running": service.running()},
    }


def _image_tokens(ctx: Context, query: object) -> dict[str, int]:
    params = dict(query)  # type: ignore[call-overload]
    width, height = _whole(params, "width", MAX_SIDE), _whole(params, "height", MAX_SIDE)
    max_pixels = _whole(params, "maxPixels", MAX_BUDGET) if "maxPixels" in params else None
    low, high = pixel_budget(ctx.settings, max_pixels=max_pixels)
    new_height, new_width = smart_resize(height, width, min_pixels=low, max_pixels=high)
    tokens = (new_width // 28) * (new_height // 28)
    return {"width": new_width, "height": new_height, "tokens": tokens, "maxPixels": high}


def _whole(params: dict[str, str], name: str, limit: int) -> int:
    text = params.get(name, "")
    if not (text.isascii() and text.isdigit()) or len(text) > 12 or not 0 < int(text) <= limit:
        raise InvalidParameter(
            f"{name} must be a whole number from 1 to {limit}; got {text[:20]!r}.",
            parameter=name,
            min=1,
            max=limit,
        )
    return int(text)
