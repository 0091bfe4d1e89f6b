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


class ConnectionFailed(FastAmqpError):
    """No connection to any host of the transport URL could be made or kept."""


class AuthenticationError(ConnectionFailed):
    """The peer refused our SASL credentials (or the mechanisms on offer)."""


class SendTimeout(FastAmqpError, TimeoutError):
    """A message was not settled by the peer before its deadline.

    ``no_credit`` is True when the peer never gave the link any credit: nothing could
    be sent. Through a router that means no consumer exists for the address (how
    qdrouterd says "no route"), which ``at_least_once`` reports as undeliverable.
    """

    def __init__(self, message, no_credit=False):
        super().__init__(message)
        self.no_credit = no_credit


class SendFailure(FastAmqpError):
    """The peer refused a message (rejected, or modified as undeliverable), or its
    retry budget ran out. ``outcome`` is the final outcome when there was one."""

    def __init__(self, message, outcome=None):
        super().__init__(message)
        self.outcome = outcome


class ReplyTimeout(FastAmqpError, TimeoutError):
    """No reply to an RPC call arrived before its deadline."""


class CallMonitorTimeout(ReplyTimeout):
    """The server sent no heartbeat within the call-monitor timeout."""


class EngineClosed(FastAmqpError):
    """The connection engine was closed while the operation was waiting."""


class DeclarationError(ConnectionFailed):
    """RabbitMQ did not declare a queue or binding fastamqp needs (fastamqp.addressing.rabbitmq).

    ``refused`` is True when the broker said no (a missing permission, a queue that
    exists with other arguments, an unknown virtual host): trying again will not help
    until the operator changes something. False: the request did not get through
    (no connection, a timeout).
    """

    def __init__(self, message, refused=False, status=None):
        super().__init__(message)
        self.refused = refused
        self.status = status
