"""Run a bundle on the host: a runner per backend, and the prompt-to-image loop.

``load_bundle(path, backend="onnx")`` gives a ``BundlePipeline``; call it with a prompt.
It reads only the manifest and the files it names, as the phone apps do.
"""

from ..images import to_uint8_image
from ..noise import seeded_noise
from .pipeline import BundlePipeline, load_bundle
from .runners import HOST_BACKENDS, LiteRTRunner, OnnxRunner, Runner, open_runner

__all__ = [
    "HOST_BACKENDS",
    "BundlePipeline",
    "LiteRTRunner",
    "OnnxRunner",
    "Runner",
    "load_bundle",
    "open_runner",
    "seeded_noise",
    "to_uint8_image",
]
