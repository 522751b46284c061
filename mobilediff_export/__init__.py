"""mobilediff_export: MobileDiffusion models, from checkpoint to a phone-ready bundle."""

__version__ = "0.1.0"
