"""edgecap from Python: caption a picture in one call, or keep a model loaded for many.

    import edgecap

    print(edgecap.caption("photo.jpg"))  # the default model, loaded for this one call

    with edgecap.open_engine() as engine:  # one model, loaded once
        result = engine.caption("cat.png", "What colour is the cat?", max_tokens=64)
        for item in engine.stream("https://example.com/street.jpg"):
            print(item.text if isinstance(item, edgecap.TokenPiece) else "", end="")

The model is the one the command line would use (``edgecap caption``): ``model=`` names one
(registry name, alias, AIR id, or a :class:`ModelFiles`), else ``Settings.model``
(``EDGECAP_MODEL``), else the registry's default. Settings come from ``EDGECAP_*`` like the
CLI's, with keyword overrides on top. An image is anything
:func:`edgecap.inputs.images.load_image` reads (a path, an http(s) URL, a data URI, base64
text, bytes) or a PIL image. The per-call options are :data:`CAPTION_OPTIONS`; an unknown
option is a TypeError naming it, a bad value an :class:`InvalidParameter` naming it.

``import edgecap`` stays cheap: llama.cpp, numpy and Pillow are imported when a model loads or
an image is read, not before. Reference: docs/python-api.md.
"""

from __future__ import annotations

import dataclasses
import difflib
import io
import os
import sys
import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edgecap.config import (
    MAX_SEED,
    MAX_TEMPERATURE,
    MAX_TOKENS_LIMIT,
    MAX_TOP_K,
    PIXELS_PER_TOKEN,
    Settings,
    load_settings,
)
from edgecap.errors import InvalidParameter, ModelNotReady
from edgecap.records import CaptionRequest, CaptionResult, ModelFiles, Sampling, TokenPiece

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

    from edgecap.engine.engine import Engine

    ImageInput = str | bytes | os.PathLike[str] | PILImage
else:
    ImageInput = Any

_SAMPLING = Sampling()  # the defaults of every sampling option
SAMPLING_FIELDS = {field.name for field in dataclasses.fields(Sampling)}


class RandomWeightsWarning(UserWarning):
    """The model has random weights (the demo model): its captions are noise."""


class CallOptions(BaseModel):
    """What one call may ask besides the image and the prompt; checked before the model runs."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    system_prompt: str | None = Field(None, description="default: Settings.system_prompt")
    json_schema: dict[str, Any] | None = Field(
        None, description="constrain the answer to this JSON schema; {} = any JSON object"
    )
    max_tokens: int | None = Field(
        None, ge=1, le=MAX_TOKENS_LIMIT, description="default: Settings'"
    )
    temperature: float = Field(
        _SAMPLING.temperature, ge=0.0, le=MAX_TEMPERATURE, description="0 = greedy"
    )
    top_p: float = Field(_SAMPLING.top_p, ge=0.0, le=1.0)
    top_k: int = Field(_SAMPLING.top_k, ge=0, le=MAX_TOP_K, description="0 = off")
    min_p: float = Field(_SAMPLING.min_p, ge=0.0, le=1.0)
    repeat_penalty: float = Field(_SAMPLING.repeat_penalty, gt=0.0, le=2.0, description="1 = off")
    seed: int = Field(_SAMPLING.seed, ge=0, le=MAX_SEED)
    min_pixels: int | None = Field(None, ge=PIXELS_PER_TOKEN, description="image budget floor")
    max_pixels: int | None = Field(None, ge=PIXELS_PER_TOKEN, description="image budget")

    @field_validator("system_prompt")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be empty; leave it out for the default")
        return value

    @field_validator("json_schema")
    @classmethod
    def _a_schema(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value:
            import jsonschema  # only for a call that constrains its output

            try:
                jsonschema.validators.validator_for(value).check_schema(value)
            except jsonschema.SchemaError as exc:
                raise ValueError(f"not a JSON schema ({exc.message})") from None
        return value

    def sampling(self, settings: Settings) -> Sampling:
        return settings.sampling_for(**self.model_dump(include=SAMPLING_FIELDS))


CAPTION_OPTIONS: tuple[str, ...] = tuple(CallOptions.model_fields)
SETTINGS_OPTIONS: tuple[str, ...] = tuple(Settings.model_fields)


# -- one call ------------------------------------------------------------------------------


def caption(
    image: ImageInput | CaptionRequest,
    prompt: str | None = None,
    *,
    model: str | ModelFiles | None = None,
    settings: Settings | None = None,
    **opts: Any,
) -> CaptionResult:
    """Caption ``image`` with ``model`` (default: the default model) and return the result.

    ``opts`` are caption options (:data:`CAPTION_OPTIONS`, e.g. ``max_tokens=64``) and
    :class:`Settings` fields (e.g. ``n_threads=2``, ``offline=True``); a name that is both
    (``max_tokens``, ``max_pixels``, ...) is taken as the caption option, with the same effect.
    The options and the image are checked before the model loads; the model is loaded for this
    call and freed after it: for several images, use :func:`open_engine`. Raises TypeError for
    an unknown option, and the :class:`~edgecap.errors.EdgecapError` of whatever fails (a bad
    value, an unreadable image, no model installed) with a message that says how to fix it.
    """
    known = CAPTION_OPTIONS + SETTINGS_OPTIONS
    _refuse_unknown("caption", [name for name in opts if name not in known], known)
    per_call = {k: v for k, v in opts.items() if k in CAPTION_OPTIONS}
    overrides = {k: v for k, v in opts.items() if k not in CAPTION_OPTIONS}
    resolved_settings = make_settings(settings, overrides)
    request = build_request(image, prompt, per_call, resolved_settings)
    with open_engine(model, settings=resolved_settings) as engine:
        return engine.caption(request)


# -- one model, many calls -----------------------------------------------------------------


def open_engine(
    model: str | ModelFiles | None = None, *, settings: Settings | None = None, **overrides: Any
) -> Captioner:
    """Load ``model`` once and return a :class:`Captioner` for it (a context manager).

    ``overrides`` are :class:`Settings` fields (e.g. ``n_threads=2``, ``n_ctx=4096``), applied on
    top of ``settings`` if given, else of the ``EDGECAP_*`` environment. Raises TypeError for an
    unknown name; InvalidParameter for a bad value; UnknownModel, ModelNotReady or ModelError
    when the model cannot be found or loaded.
    """
    _refuse_unknown(
        "open_engine", [n for n in overrides if n not in SETTINGS_OPTIONS], SETTINGS_OPTIONS
    )
    resolved_settings = make_settings(settings, overrides)
    files = model if isinstance(model, ModelFiles) else resolve_model(resolved_settings, model)
    from edgecap.engine.engine import Engine  # loads llama.cpp: only now

    return Captioner(Engine(files, resolved_settings), files, resolved_settings)


class Captioner:
    """One loaded model. :meth:`caption` and :meth:`stream` may be called any number of times.

    Calls are serialised (llama.cpp is not thread-safe); a new question about the same image
    reuses its cached embedding. Use it in a ``with`` block, or call :meth:`close`.
    """

    def __init__(self, engine: Engine, model: ModelFiles, settings: Settings) -> None:
        self.model = model  # which files are loaded; ``model.random_weights`` for the demo model
        self.settings = settings
        self._engine: Engine | None = engine

    def request(
        self, image: ImageInput | CaptionRequest, prompt: str | None = None, **opts: Any
    ) -> CaptionRequest:
        """The request :meth:`caption` would run: options checked, the image read and resized.

        A :class:`CaptionRequest` passes through unchanged (then give no prompt or options).
        """
        return build_request(image, prompt, opts, self.settings)

    def caption(
        self, image: ImageInput | CaptionRequest, prompt: str | None = None, **opts: Any
    ) -> CaptionResult:
        """Caption one image; the options are :data:`CAPTION_OPTIONS` (see :func:`caption`)."""
        return self._loaded().caption(self.request(image, prompt, **opts))

    def stream(
        self, image: ImageInput | CaptionRequest, prompt: str | None = None, **opts: Any
    ) -> Iterator[TokenPiece | CaptionResult]:
        """Yield :class:`TokenPiece` s as the text is generated, then the :class:`CaptionResult`.

        The image is read and the options checked when this is called, before the first item.
        The engine stays busy until the iterator is exhausted or closed.
        """
        request = self.request(image, prompt, **opts)
        return self._loaded().stream(request)

    def close(self) -> None:
        """Free the model (idempotent). Later calls raise ModelNotReady."""
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.close()

    def __enter__(self) -> Captioner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "open" if self._engine is not None else "closed"
        return f"<edgecap.Captioner {self.model.id} ({state})>"

    def _loaded(self) -> Engine:
        if self._engine is None:
            raise ModelNotReady(
                f"This engine for {self.model.id} is closed; open another with "
                "edgecap.open_engine().",
                parameter="model",
            )
        return self._engine


# -- the parts ---------------------------------------------------------------------------------


def build_request(
    image: ImageInput | CaptionRequest,
    prompt: str | None,
    opts: Mapping[str, Any],
    settings: Settings,
) -> CaptionRequest:
    """The engine's request for ``image``: options checked, then the image read and resized.

    A :class:`CaptionRequest` passes through unchanged (then give no prompt or options).
    """
    if isinstance(image, CaptionRequest):
        if prompt is not None or opts:
            raise TypeError("pass either a CaptionRequest or an image with options, not both")
        return image
    _refuse_unknown("caption", [n for n in opts if n not in CAPTION_OPTIONS], CAPTION_OPTIONS)
    options = _validated(CallOptions, opts)
    text = check_prompt(prompt, settings)
    from edgecap.inputs.images import load_image  # numpy and Pillow: only now

    loaded = load_image(
        image_source(image), settings, min_pixels=options.min_pixels, max_pixels=options.max_pixels
    )
    return CaptionRequest(
        image=loaded,
        prompt=text,
        system_prompt=options.system_prompt,
        sampling=options.sampling(settings),
        json_schema=options.json_schema,
    )


def make_settings(base: Settings | None, overrides: Mapping[str, Any]) -> Settings:
    """``base`` (default: from the ``EDGECAP_*`` environment) with ``overrides``, validated."""
    if base is not None and not overrides:
        return base
    base = base if base is not None else load_settings()
    try:
        return Settings.model_validate({**base.model_dump(), **overrides})
    except ValidationError as exc:
        raise _invalid(exc, what="setting") from None


def resolve_model(settings: Settings, name: str | None) -> ModelFiles:
    """The model files ``name`` means, as ``edgecap caption --model`` resolves it; warns
    (:class:`RandomWeightsWarning`) when its weights are random."""
    from edgecap.registry import Registry  # the registry's HTTP client: only now

    registry = Registry(settings)
    files = registry.resolve(name)
    if files.random_weights:
        from edgecap.cli.render import random_weights_notice

        notice = random_weights_notice(files.id, registry.catalog.default)
        warnings.warn(notice, RandomWeightsWarning, stacklevel=3)
    return files


def check_prompt(prompt: str | None, settings: Settings) -> str:
    """The instruction: ``prompt``, or the settings' default prompt when None."""
    if prompt is None:
        return settings.default_prompt
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a string, not {type(prompt).__name__}")
    if not prompt.strip():
        raise InvalidParameter(
            "The prompt is empty; ask something, or pass None for the default prompt.",
            parameter="prompt",
        )
    return prompt


# PIL image modes a PNG holds as they are; other modes (CMYK, YCbCr, F, ...) become RGB.
PNG_MODES = frozenset({"1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"})


def image_source(image: Any) -> str | bytes | Path:
    """What :func:`~edgecap.inputs.images.load_image` reads for ``image``.

    A PIL image is encoded as PNG (lossless; the result must fit ``Settings.max_image_bytes``).
    """
    if isinstance(image, str | bytes | Path):
        return image
    if isinstance(image, os.PathLike):
        return Path(os.fspath(image))
    if isinstance(image, bytearray | memoryview):
        return bytes(image)
    pil = sys.modules.get("PIL.Image")  # a PIL image means Pillow is imported already
    if pil is not None and isinstance(image, pil.Image):
        picture = image if image.mode in PNG_MODES else image.convert("RGB")
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG", compress_level=1)
        return buffer.getvalue()
    raise TypeError(
        "image must be a path, an http(s) URL, a data URI, base64 text, bytes or a PIL image, "
        f"not {type(image).__name__}"
    )


def _refuse_unknown(function: str, unknown: Iterable[str], known: tuple[str, ...]) -> None:
    for name in unknown:
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise TypeError(
            f"{function}() got an unexpected keyword argument {name!r}{hint}; it takes "
            f"{', '.join(known)}"
        )


def _validated(model: type[CallOptions], values: Mapping[str, Any]) -> CallOptions:
    try:
        return model.model_validate(dict(values))
    except ValidationError as exc:
        raise _invalid(exc, what="option") from None


def _invalid(exc: ValidationError, *, what: str) -> InvalidParameter:
    """Pydantic's first complaint as an InvalidParameter naming the option."""
    error = exc.errors()[0]
    name = ".".join(str(part) for part in error["loc"]) or "?"
    given = error.get("input")
    return InvalidParameter(
        f"The {what} {name}={given!r} is not valid: {error['msg']}.", parameter=name
    )
