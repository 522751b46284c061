"""The exceptions the library raises on bad input.

Every error a user can cause (a wrong path, a corrupt file, a config we cannot express)
is a ``MobileDiffError``; the CLI prints its message as one line and exits non-zero.
Anything else escaping the library is a bug and keeps its traceback.
"""


class MobileDiffError(Exception):
    """Base class: a problem with the user's input, described so they can fix it."""


class ConfigError(MobileDiffError):
    """A config file or value is malformed, unknown, or cannot be expressed by our modules."""


class CheckpointError(MobileDiffError):
    """Weights are missing, corrupt, or do not match the config they come with."""


class TokenizerError(MobileDiffError):
    """Tokenizer files are missing or malformed, or a prompt cannot be read."""
