"""What a decoded oslo.messaging AMQP message is, and the rules that classify it.

Both codecs (C in ``_core``, pure Python in ``engine.pure.codec``) pull the same raw parts out
of Proton -- properties, header ttl, the body section -- and hand them to :func:`build`,
so the rules for what counts as a request, a reply or a call-monitor heartbeat, and the
errors for what does not, are written once.

Wire format (REFERENCE §3.8): one amqp-value section holding the UTF-8 JSON text of
``{"request": ..., "context": ..., ["call_monitor_timeout": ...]}`` for RPC requests and
notifications, ``{"response": ...}`` or ``{"failure": "<json>"}`` for replies, and no body
at all for a heartbeat. A msgpack body (``serializer = msgpack``) travels in a data section
with content-type ``application/msgpack``.
"""
from fastamqp.exceptions import CodecError

REQUEST = "request"        # RPC call/cast or notification
REPLY = "reply"            # RPC reply: response or failure
HEARTBEAT = "heartbeat"    # call-monitor keepalive: correlation-id, no body

# Refuse to decode anything larger: a peer (or a bug) must not make a listener
# allocate without bound. RabbitMQ 4 defaults to 16 MiB, qpidd has no limit.
DEFAULT_MAX_MESSAGE_SIZE = 64 * 1024 * 1024

# oslo.messaging's notification envelope (oslo_messaging/_drivers/common.py)
ENVELOPE_VERSION_KEY = "oslo.version"
ENVELOPE_MESSAGE_KEY = "oslo.message"
ENVELOPE_VERSION = "2.0"

# pn_millis_t is 32 bits: the longest ttl the header can carry.
MAX_TTL_MS = 0xFFFFFFFF

# ``non_durable=True`` (both codecs' encode_*): the header's durable field written as
# an explicit false. Proton writes a false durable as null (or an empty header, list0),
# which AMQP reads as false, but RabbitMQ 4.0 and 4.1 take a header without a boolean
# durable (or no header) as durable and write the message to disk (mc_amqp); RabbitMQ
# 4.x addressers ask for it (docs/rabbitmq.md). Proton always begins a message with its
# header section: 00 53 70, then 45 (list0), or c0 <size> <count> and the fields, the
# first being durable (40, null). The explicit header is c0 02 01 42 (one field,
# false); with a ttl the 40 becomes 42 in place.
HEADER_PREFIX = b"\x00\x53\x70"
NON_DURABLE_HEADER = b"\x00\x53\x70\xc0\x02\x01\x42"


def mark_non_durable(data):
    """``data`` (a message as Proton encodes it) with its header's durable field an
    explicit false (see NON_DURABLE_HEADER); the C codec does the same in _core."""
    if data[:3] == HEADER_PREFIX:
        if data[3] == 0x45:
            return NON_DURABLE_HEADER + data[4:]
        if data[3] == 0xC0 and data[5] >= 1 and data[6] == 0x40:
            return data[:6] + b"\x42" + data[7:]
        if data[3] == 0xC0 and data[5] >= 1 and data[6] == 0x42:
            return data
    raise CodecError(f"cannot mark the message non-durable: unexpected header "
                     f"{bytes(data[:8]).hex(' ')}")


# Message sections by descriptor code (AMQP 1.0 part 3.2), in the order they must appear.
# Proton's pn_message_decode accepts truncated or trailing bytes silently (a reply cut
# short decodes as a heartbeat), so both codecs first walk the sections with Proton's
# strict pn_data_decode and apply check_section() to each.
SECTION_NAMES = {0x70: "header", 0x71: "delivery-annotations",
                 0x72: "message-annotations", 0x73: "properties",
                 0x74: "application-properties", 0x75: "data", 0x76: "amqp-sequence",
                 0x77: "amqp-value", 0x78: "footer"}
_REPEATABLE_SECTIONS = (0x75, 0x76)  # a body may be several data or sequence sections


def check_section(index, offset, code, previous):
    """The rule both codecs apply to each top-level section; returns ``code``.

    ``code`` is the section's ulong descriptor, or None when the value is not a
    described type with a ulong descriptor.
    """
    if code is None or code not in SECTION_NAMES:
        where = "not a described type" if code is None else f"descriptor 0x{code:x}"
        raise CodecError(f"not an AMQP message: value {index} at offset {offset} is not "
                         f"a message section ({where})")
    if previous is not None and (code < previous or (
            code == previous and code not in _REPEATABLE_SECTIONS)):
        raise CodecError(f"not an AMQP message: section {SECTION_NAMES[code]} at offset "
                         f"{offset} out of order after {SECTION_NAMES[previous]}")
    if previous in (0x75, 0x76, 0x77) and code in (0x75, 0x76, 0x77) and code != previous:
        raise CodecError(f"not an AMQP message: body sections of two kinds "
                         f"({SECTION_NAMES[previous]} and {SECTION_NAMES[code]})")
    return code


APPLICATION_PROPERTIES = 0x74


def application_property_key_error(offset, type_name):
    """AMQP 1.0 §3.2.5: application-properties keys are strings; anything else makes
    the message malformed (both codecs check it while walking the sections)."""
    return CodecError(f"not an AMQP message: application-properties at offset {offset} "
                      f"has a {type_name} key (keys must be strings)")


def check_finite(name, seconds):
    """Timeouts and ttls must be finite numbers of seconds (NaN/inf cannot be encoded)."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise CodecError(f"{name} must be a number of seconds, not "
                         f"{type(seconds).__name__}")
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        raise CodecError(f"{name} must be a finite number of seconds, not {seconds!r}")


class DecodedMessage:
    """One message from the wire, as the driver needs it.

    ``ttl`` is in seconds (header ttl / 1000) and ``expiry_time`` in seconds since the
    epoch (properties absolute-expiry-time / 1000); both are None when absent.
    """

    __slots__ = ("kind", "address", "reply_to", "message_id", "correlation_id", "ttl",
                 "expiry_time", "content_type", "serializer", "request", "context",
                 "call_monitor_timeout", "enveloped", "response", "failure")

    def __init__(self, kind, address, reply_to, message_id, correlation_id, ttl,
                 expiry_time, content_type, serializer):
        self.kind = kind
        self.address = address
        self.reply_to = reply_to
        self.message_id = message_id
        self.correlation_id = correlation_id
        self.ttl = ttl
        self.expiry_time = expiry_time
        self.content_type = content_type
        self.serializer = serializer
        self.request = None
        self.context = None
        self.call_monitor_timeout = None
        self.enveloped = False
        self.response = None
        self.failure = None

    def as_dict(self):
        return {name: getattr(self, name) for name in self.__slots__}

    def __eq__(self, other):
        if not isinstance(other, DecodedMessage):
            return NotImplemented
        return self.as_dict() == other.as_dict()

    def __repr__(self):
        # Never the body: contexts carry auth tokens, and reprs end up in logs.
        return (f"<DecodedMessage {self.kind} to={self.address!r} "
                f"id={self.message_id!r} correlation_id={self.correlation_id!r}>")


def envelope(inner_json):
    """oslo's 2.0 notification envelope around the message's JSON text."""
    return {ENVELOPE_VERSION_KEY: ENVELOPE_VERSION, ENVELOPE_MESSAGE_KEY: inner_json}


def _unwrap_envelope(request, loads_json):
    # The same rule as oslo's deserialize_msg: only a dict with both keys is an
    # envelope; its major version must match and its minor must not be newer.
    if not (isinstance(request, dict) and ENVELOPE_VERSION_KEY in request
            and ENVELOPE_MESSAGE_KEY in request):
        return request, False
    version = request[ENVELOPE_VERSION_KEY]
    try:
        major, minor = (int(part) for part in str(version).split("."))
    except ValueError:
        raise CodecError(f"message envelope has an invalid version {version!r}") from None
    if major != 2 or minor > 0:
        raise CodecError(f"unsupported message envelope version {version!r} "
                         f"(this driver reads {ENVELOPE_VERSION})")
    inner = request[ENVELOPE_MESSAGE_KEY]
    if not isinstance(inner, str):
        raise CodecError("message envelope's 'oslo.message' is not a JSON string")
    return loads_json(inner), True


def build(address, reply_to, message_id, correlation_id, ttl_ms, expiry_ms,
          content_type, serializer, has_body, body, loads_json):
    """Classify a decoded body and check the fields each kind needs."""
    msg = DecodedMessage(
        None, address, reply_to, message_id, correlation_id,
        ttl_ms / 1000.0 if ttl_ms else None,
        expiry_ms / 1000.0 if expiry_ms else None,
        content_type, serializer)
    if not has_body:
        if correlation_id is None:
            raise CodecError("message has no body and no correlation-id: it is neither "
                             "a request, a reply nor a call-monitor heartbeat")
        msg.kind = HEARTBEAT
        return msg
    if not isinstance(body, dict):
        raise CodecError(f"message body is a {type(body).__name__}, "
                         f"expected a map (JSON object)")
    if "request" in body:
        if "context" not in body:
            raise CodecError("request body has no 'context'")
        context = body["context"]
        if context is not None and not isinstance(context, dict):
            raise CodecError(f"request 'context' is a {type(context).__name__}, "
                             f"expected a map")
        request, msg.enveloped = _unwrap_envelope(body["request"], loads_json)
        if not isinstance(request, dict):
            raise CodecError(f"'request' is a {type(request).__name__}, expected a map")
        monitor = body.get("call_monitor_timeout")
        if monitor is not None and (isinstance(monitor, bool)
                                    or not isinstance(monitor, (int, float))):
            raise CodecError(f"'call_monitor_timeout' is a {type(monitor).__name__}, "
                             f"expected a number")
        msg.kind = REQUEST
        msg.request = request
        msg.context = context if context is not None else {}
        msg.call_monitor_timeout = monitor
        return msg
    if "response" in body or "failure" in body:
        if correlation_id is None:
            raise CodecError("reply has no correlation-id")
        failure = body.get("failure")
        if failure is not None and not isinstance(failure, str):
            raise CodecError(f"reply 'failure' is a {type(failure).__name__}, "
                             f"expected a serialized exception (string)")
        msg.kind = REPLY
        msg.failure = failure
        msg.response = body.get("response") if failure is None else None
        return msg
    raise CodecError("message body has neither 'request' (request or notification) "
                     "nor 'response'/'failure' (reply)")
