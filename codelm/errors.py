"""User-facing errors.

Anything a user can cause (a missing file, a bad option value, a corrupt checkpoint, a tokenizer mismatch) raises a
`UserError` subclass with a one-line message naming the file, line or field. The CLI prints that line and exits 2;
everything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input. The message is one line, shown as is."""


class ConfigError(UserError):
    """Unknown option, bad value, unknown preset, unreadable config file."""


class CheckpointError(UserError):
    """Missing, corrupt, truncated or mismatched checkpoint."""


class DataError(UserError):
    """Unreadable source, malformed record, empty corpus, shard/tokenizer mismatch."""


class TokenizerMismatch(UserError):
    """Two artefacts were made with different tokenizers."""


class CapabilityError(UserError):
    """A mode the model was never trained for (e.g. FIM on an l2r-only model)."""
