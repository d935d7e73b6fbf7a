"""edgecap: offline image captioning with Qwen2.5-VL on llama.cpp.

    import edgecap
    print(edgecap.caption("photo.jpg"))

:func:`caption` captions one image with the default model; :func:`open_engine` loads a model
once for many calls (``.caption()``, ``.stream()``). Importing edgecap loads neither
llama.cpp nor numpy. Reference: docs/python-api.md.
"""

from edgecap.api import (
    CAPTION_OPTIONS,
    Captioner,
    RandomWeightsWarning,
    caption,
    open_engine,
)
from edgecap.config import Settings
from edgecap.errors import EdgecapError
from edgecap.records import (
    CaptionRequest,
    CaptionResult,
    LoadedImage,
    ModelFiles,
    Sampling,
    TokenPiece,
)

__version__ = "0.1.0"

__all__ = [
    "CAPTION_OPTIONS",
    "CaptionRequest",
    "CaptionResult",
    "Captioner",
    "EdgecapError",
    "LoadedImage",
    "ModelFiles",
    "RandomWeightsWarning",
    "Sampling",
    "Settings",
    "TokenPiece",
    "__version__",
    "caption",
    "open_engine",
]
