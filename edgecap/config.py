"""All defaults in one place, with one precedence rule:
flag > ``EDGECAP_*`` environment > configuration file > default.

The configuration file is TOML (``--config FILE`` or ``EDGECAP_CONFIG``; docs/configuration.md),
read through pydantic-settings' TOML source. An empty environment variable counts as unset.
Only this module reads the process environment (:func:`load_settings`,
:func:`explain_settings`). Everything else receives a :class:`Settings` object as an argument.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import platformdirs
from pydantic import BeforeValidator, Field, ValidationError
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from edgecap.config_file import describe_line, read_config
from edgecap.errors import InvalidParameter
from edgecap.logs import LogFormat, LogLevel
from edgecap.records import Sampling

PIXELS_PER_TOKEN = 28 * 28  # one image token = a 28x28 pixel cell after the 2x2 merge

# Default image budget. On a 2-core CPU the 7B vision encoder costs roughly 10-25 ms per image
# token (docs/performance.md); 1024 tokens (~0.8 MP, e.g. 1036x756) keeps a caption around
# ten-odd seconds while leaving enough detail to read signs and count objects. Requests may ask
# for up to the ceiling (4096 tokens ~ 3.2 MP, llama.cpp's own default maximum).
DEFAULT_MIN_PIXELS = 4 * PIXELS_PER_TOKEN
DEFAULT_MAX_PIXELS = 1024 * PIXELS_PER_TOKEN
CEILING_MAX_PIXELS = 4096 * PIXELS_PER_TOKEN

# Limits of a request, the one place each is typed: the API schema, the CLI flags and the
# settings all read them.
MAX_TOKENS_LIMIT = 8192  # the longest answer anyone may ask for
MAX_TEMPERATURE = 2.0  # temperature runs from 0 (greedy) to this
MAX_SEED = 2**32 - 1  # seeds run from 0 to this (llama.cpp's uint32)
MAX_TOP_K = 1000  # top_k runs from 0 (off) to this
MAX_TTL_S = 365 * 24 * 3600  # results are kept at most a year, whatever ttl asks: not an archive

DEFAULT_PROMPT = (
    "Describe this image in detail, including the main subjects, their actions, "
    "the setting, colors, and any visible text."
)


def _upper(value: Any) -> Any:
    return value.upper() if isinstance(value, str) else value


def default_home() -> Path:
    return Path(platformdirs.user_data_dir("edgecap", appauthor=False))


class Settings(BaseSettings):
    """Runtime settings. Construct with keyword overrides (from CLI flags) or via load_settings."""

    # env_ignore_empty: an empty EDGECAP_HOME= (or any empty variable) means unset, as XDG does.
    model_config = SettingsConfigDict(
        env_prefix="EDGECAP_", extra="forbid", frozen=True, env_ignore_empty=True
    )

    home: Path = Field(default_factory=default_home, description="Model store, caches, task DB")
    offline: bool = Field(False, description="Refuse every outbound network access")

    # Images
    max_image_bytes: int = Field(32 * 1024 * 1024, gt=0, description="Largest encoded image")
    max_image_megapixels: float = Field(
        24.0,
        gt=0,
        description="Largest decoded image (after JPEG draft scaling), checked from the header "
        "before decoding. The model's ceiling is ~3.2 MP; 24 MP covers camera photos",
    )
    decode_megapixels_in_flight: float = Field(
        64.0, gt=0, description="Pixels being decoded at once, over all requests"
    )
    min_pixels: int = Field(DEFAULT_MIN_PIXELS, ge=PIXELS_PER_TOKEN)
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=PIXELS_PER_TOKEN)
    max_pixels_ceiling: int = Field(CEILING_MAX_PIXELS, ge=PIXELS_PER_TOKEN)

    # Network fetches (image URLs, webhooks, uploads)
    fetch_timeout_s: float = Field(20.0, gt=0)
    fetch_max_redirects: int = Field(3, ge=0, le=20)
    url_allowlist: list[str] = Field(
        default_factory=list,
        description="Image URLs: hosts or CIDR ranges allowed even if private/link-local",
    )
    delivery_allowlist: list[str] = Field(
        default_factory=list,
        description="webhookURL/uploadEndpoint: hosts or CIDR ranges allowed even if private",
    )
    max_concurrent_fetches: int = Field(8, ge=1, description="URL fetches in flight, all kinds")
    webhook_secret: str | None = Field(
        None, repr=False, description="Sign webhook bodies: X-Edgecap-Signature: sha256=<hmac>"
    )
    delivery_per_destination: int = Field(2, ge=1, description="Deliveries in flight per host")

    # Engine
    model: str | None = Field(None, description="Default model: registry name, alias or path")
    n_threads: int | None = Field(None, ge=1, description="Default: physical cores")
    n_ctx: int = Field(8192, ge=512)
    n_gpu_layers: int = Field(0, ge=-1, description="-1 = all layers on the GPU")
    mmproj_gpu: bool = True
    extra_buffers: bool | None = Field(
        None,
        description="llama.cpp's extra CPU weight buffers (repacking, AMX). None = auto: "
        "measured once per model file (the faster way is kept in kernels.json); off on CPUs "
        "with AMX, whose quantized matmul crashes in this llama.cpp (llama.cpp #20824)",
    )
    image_cache_entries: int = Field(32, ge=0)
    image_cache_dir: Path | None = Field(None, description="Persist image embeddings here")
    system_prompt: str | None = None
    default_prompt: str = DEFAULT_PROMPT
    max_tokens: int = Field(256, ge=1, le=MAX_TOKENS_LIMIT)
    task_timeout_s: float = Field(
        600.0, gt=0, description="Wall-clock limit of one caption in the engine process"
    )
    parallel: int = Field(
        4,
        ge=1,
        le=4,
        description="Tasks the server decodes together in one batch (at most the engine's 4 "
        "sequence slots); 1 = one task at a time",
    )

    # Server
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    api_keys: list[str] = Field(default_factory=list, repr=False)
    api_key_file: Path | None = Field(None, description="More API keys, one per line")
    queue_size: int = Field(64, ge=1)
    sync_timeout_s: float = Field(120.0, gt=0)
    max_body_bytes: int = Field(48 * 1024 * 1024, gt=0)
    result_ttl_s: int = Field(24 * 3600, ge=60, le=MAX_TTL_S)
    upload_retention_days: int = Field(30, ge=1)
    cost_per_second: float = Field(0.0002, ge=0, description="USD per compute second")
    webhook_retries: int = Field(5, ge=0, le=20)
    # Who may talk to the server (server/guards.py) and how much each client may hold.
    allowed_hosts: list[str] = Field(
        default_factory=list, description="Host names (besides localhost and IPs) it answers to"
    )
    allowed_origins: list[str] = Field(
        default_factory=list, description="Browser origins (besides its own) allowed to call it"
    )
    metrics_public: bool = Field(False, description="/metrics without a key even with keys set")
    max_connections: int = Field(1024, ge=1, description="uvicorn limit_concurrency")
    header_timeout_s: float = Field(
        10.0, gt=0, description="Deadline to receive a request's line and headers (408)"
    )
    body_timeout_s: float = Field(60.0, gt=0, description="Deadline to receive a request body")
    ws_auth_timeout_s: float = Field(10.0, gt=0, description="Close unauthenticated idle sockets")
    ws_sessions_per_key: int = Field(32, ge=1)
    ws_tasks_per_connection: int = Field(64, ge=1)
    upload_quota_bytes_per_key: int = Field(1 << 30, gt=0, description="Stored uploads per key")
    upload_quota_bytes_total: int = Field(8 << 30, gt=0, description="Stored uploads, all keys")

    # The web page at GET / (docs/web.md)
    kiosk: bool = Field(False, description="Serve the single-purpose, full-screen kiosk page")
    kiosk_prompt: str = Field(
        "Describe this picture in one or two sentences.",
        min_length=1,
        max_length=2000,
        description="The one prompt the kiosk page uses",
    )
    kiosk_idle_s: float = Field(
        60.0, ge=1, le=24 * 3600, description="Idle seconds before the kiosk clears its screen"
    )

    # Logging (the server and its engine process; see edgecap.logs)
    log_level: Annotated[LogLevel, BeforeValidator(_upper)] = "INFO"
    log_format: LogFormat = Field("text", description="text, or json: one JSON object a line")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Keyword arguments (flags), then the environment, then the configuration file."""
        path = _CONFIG_FILE.get()
        if path is None:
            return (init_settings, env_settings)
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls, path))

    def sampling_for(self, **asked: Any) -> Sampling:
        """The sampler settings of a request: what it asked (None: not asked), the defaults of
        :class:`Sampling` for the rest, and this server's ``max_tokens`` unless it asked."""
        given = {name: value for name, value in asked.items() if value is not None}
        return Sampling(**{"max_tokens": self.max_tokens, **given})

    def system_prompt_for(self, asked: str | None) -> str | None:
        """The system prompt a request gets: its own, else the server's (may be None)."""
        return asked or self.system_prompt

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def db_path(self) -> Path:
        return self.home / "tasks.sqlite3"

    @property
    def uploads_dir(self) -> Path:
        return self.home / "uploads"


def default_of(name: str) -> Any:
    """The default of the setting ``name`` (for help texts that state it)."""
    info = Settings.model_fields[name]
    return info.get_default(call_default_factory=True)


# The configuration file of the Settings being built (a context variable, so that Settings
# stays a plain picklable class; set only inside load_settings).
_CONFIG_FILE: ContextVar[Path | None] = ContextVar("edgecap_config_file", default=None)
SECRET_FIELDS = frozenset({"api_keys", "webhook_secret"})
CONFIG_ENV = "EDGECAP_CONFIG"


def config_path(config: Path | None = None) -> Path | None:
    """The configuration file: ``config`` (the --config flag), else $EDGECAP_CONFIG if set."""
    return config or (Path(os.environ[CONFIG_ENV]) if os.environ.get(CONFIG_ENV) else None)


def load_settings(config: Path | None = None, **overrides: Any) -> Settings:
    """Settings from non-None ``overrides`` (CLI flags), the EDGECAP_* environment, and the
    configuration file (``config``, else $EDGECAP_CONFIG), in that order of precedence.

    Raises InvalidParameter for an unreadable file, an unknown key (with its line), or a bad
    value (saying where it was set).
    """
    path = config_path(config)
    if path is not None:
        read_config(path, Settings.model_fields)
    flags = {k: v for k, v in overrides.items() if v is not None}
    token = _CONFIG_FILE.set(path)
    try:
        return Settings(**flags)
    except ValidationError as exc:
        raise _bad_value(exc, explain_origins(path, flags)) from None
    finally:
        _CONFIG_FILE.reset(token)


@dataclass(frozen=True)
class Explained:
    """One setting's effective value and where it came from."""

    name: str
    value: Any  # secrets masked
    origin: str  # "flag", "env EDGECAP_PORT", "edgecap.toml line 3" or "default"


def explain_settings(config: Path | None = None, **overrides: Any) -> list[Explained]:
    """Every setting, its effective value (secrets masked) and its origin."""
    settings = load_settings(config, **overrides)
    flags = {k: v for k, v in overrides.items() if v is not None}
    origins = explain_origins(config_path(config), flags)
    out = []
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if name in SECRET_FIELDS and value:
            value = ["****"] * len(value) if isinstance(value, list) else "****"
        out.append(Explained(name, value, origins.get(name, "default")))
    return out


def explain_origins(path: Path | None, flags: dict[str, Any]) -> dict[str, str]:
    """Where each explicitly set field comes from, by the precedence rule."""
    origins: dict[str, str] = {}
    if path is not None:
        for name in TomlConfigSettingsSource(Settings, path)():
            origins[name] = describe_line(path, name)
    for name in EnvSettingsSource(Settings)():
        origins[name] = f"env EDGECAP_{name.upper()}"
    for name in flags:
        origins[name] = "flag"
    return origins


def _bad_value(exc: ValidationError, origins: dict[str, str]) -> InvalidParameter:
    error = exc.errors()[0]
    name = ".".join(str(part) for part in error["loc"]) or "settings"
    field = str(error["loc"][0]) if error["loc"] else ""
    where = origins.get(field, "default")
    got = "" if field in SECRET_FIELDS else f"; got {error.get('input')!r}"
    return InvalidParameter(f"setting {name} (from {where}): {error['msg']}{got}.", parameter=name)
