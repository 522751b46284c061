"""mobilediff_export: MobileDiffusion models, from checkpoint to a phone-ready bundle.

The public entry point is ``load_pipeline(path_or_name)``: a config name from
``models/``, a native model folder, or a Hugging Face diffusers folder on local disk.
The pipeline (and torch) is imported on first use, so ``import mobilediff_export`` and
the config and error types stay cheap.
"""

from typing import TYPE_CHECKING, Any

from .config import ModelConfig
from .errors import CheckpointError, ConfigError, MobileDiffError, TokenizerError

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .pipeline import Pipeline, load_pipeline

__all__ = [
    "CheckpointError",
    "ConfigError",
    "MobileDiffError",
    "ModelConfig",
    "Pipeline",
    "TokenizerError",
    "__version__",
    "load_pipeline",
]


def __getattr__(name: str) -> Any:
    if name in ("Pipeline", "load_pipeline"):
        from . import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'mobilediff_export' has no attribute {name!r}")
