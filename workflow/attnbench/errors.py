"""The one exception type for errors a user can act on (bad config, dead server, tampered bundle...).

The CLI prints its message as one line, without a traceback, and exits non-zero; the message must name the cause.
Subclasses say which part failed so callers can catch narrowly."""


class AttnbenchError(Exception):
    pass


class ConfigError(AttnbenchError):
    pass


class ServerError(AttnbenchError):
    pass


class SweepError(AttnbenchError):
    pass


class BundleError(AttnbenchError):
    pass


class CompatibilityError(AttnbenchError):
    """An engine image, arm, model and GPU that cannot work together (found before anything is built)."""


class ContainerError(AttnbenchError):
    """An image could not be rendered, built, inspected or run."""


class UnsafeInputError(BundleError):
    """Input that cannot be read safely (deep nesting, huge numbers, trailing or oversized archive data):
    `attnbench verify` reports it as unreadable (exit 2), not as tampered."""
