"""mobilediff_export: MobileDiffusion models, from checkpoint to a phone-ready bundle.

The public entry point is ``load_pipeline(path_or_name)``: a config name from
``models/``, a native model folder, or a Hugging Face diffusers folder on local disk.
``export_bundle``, ``verify_bundle``, ``validate_bundle`` and ``load_bundle`` (the
manifest-driven host runtime) cover bundles. These (and torch) are imported on first use,
so ``import mobilediff_export`` and the config and error types stay cheap.
"""

from typing import TYPE_CHECKING, Any

from .config import ModelConfig
from .errors import CheckpointError, ConfigError, MobileDiffError, TokenizerError

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .bundle import verify_bundle
    from .export import export_bundle
    from .pipeline import Pipeline, load_pipeline
    from .runtime import load_bundle
    from .validate import validate_bundle

__all__ = [
    "CheckpointError",
    "ConfigError",
    "MobileDiffError",
    "ModelConfig",
    "Pipeline",
    "TokenizerError",
    "__version__",
    "export_bundle",
    "load_bundle",
    "load_pipeline",
    "validate_bundle",
    "verify_bundle",
]

_LAZY = {
    "Pipeline": "pipeline",
    "load_pipeline": "pipeline",
    "export_bundle": "export",
    "load_bundle": "runtime",
    "validate_bundle": "validate",
    "verify_bundle": "bundle",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'mobilediff_export' has no attribute {name!r}")
