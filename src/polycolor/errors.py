"""The one exception type that the stages and the CLI turn into a one-line error and exit code 1."""


class PolycolorError(Exception):
    """A user-facing error: bad params, bad input data, a missing model. Its message is one line."""


class ConfigError(PolycolorError, ValueError):
    """A params.yaml key holds a value we cannot use; the message names the key and the value."""
