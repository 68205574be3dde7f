"""Error types. Every error names the file, tensor or key it is about."""


class KeptError(Exception):
    """Base class for all errors this package raises on bad input."""


class CheckpointError(KeptError):
    """A checkpoint directory, shard, tensor or config is missing, malformed or inconsistent."""


class MappingError(KeptError):
    """A tensor was neither mapped nor dropped, or a target tensor was never written."""


class ConfigError(KeptError):
    """A workflow or command setting is invalid."""


class OutputError(KeptError):
    """An output cannot be written: it exists and is not ours, it would replace an input, another live run holds
    its directory, or the file system refused (full, read-only, permission denied)."""
