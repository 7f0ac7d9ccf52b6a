"""One exception tree for careloop; the CLI and the service translate it at their edges.

Messages are one line and name what is wrong and what is allowed, so that a user can fix the
input without reading a traceback, and tests can ``match=`` on them.
"""


class CareloopError(Exception):
    """Base of every error careloop raises on purpose."""


class ConfigError(CareloopError, ValueError):
    """A configuration value is invalid; raised before any work or output starts."""
