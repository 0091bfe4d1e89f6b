"""The one exception hierarchy of fastamqp, raised alike by the C and the pure-Python engine.

The oslo.messaging driver maps these onto oslo_messaging exceptions; the engines and the
codec never import oslo.messaging, so they raise these.
"""


class FastAmqpError(Exception):
    """Base class of every error fastamqp raises."""


class CodecError(FastAmqpError, ValueError):
    """A message could not be encoded, or bytes from the wire could not be decoded.

    The message says what was wrong (truncated frame, wrong body section, invalid
    UTF-8 or JSON, a missing field, an oversized message); a listener rejects such a
    message and keeps serving.
    """


class ConfigurationError(FastAmqpError, ValueError):
    """An option or transport URL value this driver cannot use; the message names it."""
