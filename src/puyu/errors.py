"""Error types shown to users as one clear line by the CLI (and as 4xx bodies by the server)."""


class PuyuError(Exception):
    """Base class: a problem with the user's input, files or configuration, not a bug."""


class ConfigError(PuyuError, ValueError):
    """An invalid configuration value; the message names the field."""


class CheckpointError(PuyuError):
    """A checkpoint that cannot be loaded: missing/unexpected keys, wrong shapes, corrupt shards."""


class TokenizerError(PuyuError):
    """A tokenizer file that is missing or unusable."""
