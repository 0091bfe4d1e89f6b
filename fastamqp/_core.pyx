# cython: language_level=3
"""fastamqp's C fast path: the message codec, straight on Proton C.

Twin of ``fastamqp.engine.pure.codec`` (same functions, same bytes, same results, same
exceptions); the pure module is the reference. Bodies go through the JSON libraries and
fallbacks that ``fastamqp.serializers`` chose (orjson writes, msgspec reads, the stdlib
takes what they do not): reading calls serializers.loads_json, writing calls orjson
from here with serializers' rule for NaN checked in C (see _json_body); msgpack
uses the same ``fastamqp.serializers`` functions as the twin. What this module saves is
python-qpid-proton's per-field Python/cffi layer around pn_message_t.
"""
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeUTF8
from cpython.mem cimport PyMem_Malloc, PyMem_Realloc, PyMem_Free
from libc.string cimport strlen, memcpy
from libc.math cimport isfinite
from libc.stdint cimport uint64_t, int64_t

cimport fastamqp._proton as pn

import time as _time
import uuid as _uuid

from fastamqp import message as _message
from fastamqp import serializers as _ser
from fastamqp.exceptions import CodecError

IMPLEMENTATION = "c"

cdef object _JSON = _ser.JSON
cdef object _MSGPACK = _ser.MSGPACK
cdef object _orjson_dumps = _ser.ORJSON_DUMPS
cdef object _ORJSON_ERROR = _ser.ORJSON_ERROR
cdef object _ORJSON_OPTIONS = _ser.ORJSON_OPTIONS
cdef object _dumps_json_stdlib = _ser.dumps_json_stdlib
cdef object _loads_json = _ser.loads_json
cdef object _dumps_msgpack = _ser.dumps_msgpack
cdef object _loads_msgpack = _ser.loads_msgpack
cdef object _MSGPACK_TYPES = _ser.MSGPACK_CONTENT_TYPES
cdef object _JSON_TYPES = _ser.JSON_CONTENT_TYPES
cdef bytes _MSGPACK_CONTENT_TYPE = _ser.MSGPACK_CONTENT_TYPE.encode("ascii")
cdef object _build = _message.build
cdef object _envelope = _message.envelope
cdef object _check_serializer = _ser.check_serializer
cdef object _check_section = _message.check_section
cdef object _check_finite = _message.check_finite
cdef object _app_property_key_error = _message.application_property_key_error
cdef object _UUID = _uuid.UUID
cdef object _uuid4 = _uuid.uuid4
cdef object _wall_time = _time.time


cdef extern from "<string.h>" nogil:
    const void *memchr(const void *s, int c, size_t n)


cdef bint _has_null(const char *text, size_t size) noexcept nogil:
    """Whether ``null`` occurs in text, found by memchr for its rarest letter in oslo
    bodies, 'l': memchr is vectorised, glibc's memmem for a 4-byte needle is not (about
    0.3 µs per 1 KiB body, as much as orjson takes to write it)."""
    cdef const char *end = text + size
    cdef const char *at = text
    while at < end:
        at = <const char *>memchr(at, c'l', <size_t>(end - at))
        if at == NULL:
            return False
        if at - text >= 2 and at + 1 < end and at[-2] == c'n' and at[-1] == c'u' \
                and at[1] == c'l':
            return True
        at += 1
    return False


cdef bytes _json_body(object data):
    """serializers.dumps_json, with its NaN check in C: the same bytes, faster."""
    cdef bytes text
    if _orjson_dumps is not None:
        try:
            text = _orjson_dumps(data, None, _ORJSON_OPTIONS)
        except _ORJSON_ERROR:
            pass
        else:
            if not _has_null(PyBytes_AS_STRING(text), <size_t>PyBytes_GET_SIZE(text)) \
                    or not _has_nonfinite_float(data):
                return text
    return _dumps_json_stdlib(data)


cdef inline object _json_value(const char *start, size_t size):
    # serializers.loads_json itself: inlining its msgspec call here would save one
    # Python frame (about 0.1 µs), not worth a second copy of its fallback rule.
    return _loads_json(PyBytes_FromStringAndSize(start, size))


def json_dumps(data):
    """The body text this engine writes for ``data`` (tests and benchmarks)."""
    return _json_body(data)


def json_loads(bytes text):
    """The value this engine reads from a JSON body (tests and benchmarks)."""
    return _json_value(PyBytes_AS_STRING(text), PyBytes_GET_SIZE(text))


cdef bint _has_nonfinite_float(object value) except -1:
    """serializers.has_nonfinite_float in C: the Python walk costs about 4 µs on a 1 KiB
    body with nulls, more than orjson saves (tests/test_json.py holds the two walks to
    one contract through the codecs)."""
    cdef type kind = type(value)
    if kind is float:
        return not isfinite(<double>value)
    if kind is dict:
        for item in (<dict>value).values():
            if _has_nonfinite_float(item):
                return True
    elif kind is list or kind is tuple:
        for item in value:
            if _has_nonfinite_float(item):
                return True
    return False


cdef Py_ssize_t _DEFAULT_MAX = _message.DEFAULT_MAX_MESSAGE_SIZE
cdef uint64_t _MAX_TTL_MS = _message.MAX_TTL_MS


cdef class _Scratch:
    """A pn_message_t and output buffer that codec calls reuse.

    Reuse saves a pn_message()/free pair and a buffer allocation per message. Each call
    takes one from a free list and gives it back, instead of sharing one instance: a
    call can re-enter the codec (a JSON default hook, or a finalizer run by the garbage
    collector while the decoder builds Python objects), and it must not clobber the
    message the outer call is still reading.
    """
    cdef pn.pn_message_t *msg
    cdef pn.pn_data_t *walker   # one section at a time, for _check_sections
    cdef char *buf
    cdef size_t cap

    def __cinit__(self):
        self.msg = pn.pn_message()
        self.walker = pn.pn_data(16)
        self.cap = 16384
        self.buf = <char *>PyMem_Malloc(self.cap)
        if self.msg == NULL or self.walker == NULL or self.buf == NULL:
            raise MemoryError()

    def __dealloc__(self):
        if self.msg != NULL:
            pn.pn_message_free(self.msg)
        if self.walker != NULL:
            pn.pn_data_free(self.walker)
        PyMem_Free(self.buf)

    cdef bytes encode(self, bint non_durable=False):
        cdef size_t size
        cdef int rc
        cdef char *grown
        while True:
            size = self.cap
            rc = pn.pn_message_encode(self.msg, self.buf, &size)
            if rc == 0:
                out = (_non_durable(self.buf, size) if non_durable
                       else PyBytes_FromStringAndSize(self.buf, size))
                if self.cap > (1 << 20):
                    self._shrink()
                return out
            if rc != pn.PN_OVERFLOW:
                raise CodecError(f"cannot encode AMQP message: {_pn_error(self.msg, rc)}")
            grown = <char *>PyMem_Realloc(self.buf, self.cap * 2)
            if grown == NULL:
                raise MemoryError()
            self.buf = grown
            self.cap *= 2

    cdef void _shrink(self):
        # One huge message must not pin its buffer for the life of the process.
        cdef char *small = <char *>PyMem_Realloc(self.buf, 16384)
        if small != NULL:
            self.buf = small
            self.cap = 16384


cdef list _free_scratch = []


cdef inline _Scratch _acquire():
    if _free_scratch:
        return <_Scratch>_free_scratch.pop()
    return _Scratch()


cdef inline void _release(_Scratch scratch):
    if len(_free_scratch) < 8:
        _free_scratch.append(scratch)


cdef str _pn_error(pn.pn_message_t *msg, int rc):
    cdef const char *text = pn.pn_error_text(pn.pn_message_error(msg))
    cdef const char *code = pn.pn_code(rc)
    if text != NULL and text[0] != 0:
        return f"{(<bytes>code).decode('ascii', 'replace')}: " \
               f"{(<bytes>text).decode('utf-8', 'replace')}"
    return (<bytes>code).decode("ascii", "replace")


cdef bytes _c_string(str name, object value):
    """UTF-8 bytes of a str for a NUL-terminated Proton field."""
    if not isinstance(value, str):
        raise CodecError(f"{name} must be a str, not {type(value).__name__}")
    cdef bytes raw = (<str>value).encode("utf-8")
    if strlen(PyBytes_AS_STRING(raw)) != <size_t>PyBytes_GET_SIZE(raw):
        raise CodecError(f"{name} contains a NUL character")
    return raw


cdef int _set_id(pn.pn_message_t *msg, str name, object value, bint correlation,
                 list keep) except -1:
    """Set message-id or correlation-id from str/bytes/int/UUID (AMQP message-id types).

    ``keep`` holds the bytes objects whose memory the atom points at until the
    message is encoded (Proton copies them into its own storage on set).
    """
    cdef pn.pn_atom_t atom
    cdef bytes raw
    cdef bytes uuid_bytes
    if isinstance(value, str):
        raw = _c_string(name, value)
        atom.type = pn.PN_STRING
        atom.u.as_bytes = pn.pn_bytes(PyBytes_GET_SIZE(raw), PyBytes_AS_STRING(raw))
        keep.append(raw)
    elif isinstance(value, bytes):
        raw = <bytes>value
        atom.type = pn.PN_BINARY
        atom.u.as_bytes = pn.pn_bytes(PyBytes_GET_SIZE(raw), PyBytes_AS_STRING(raw))
    elif isinstance(value, _UUID):
        uuid_bytes = value.bytes
        atom.type = pn.PN_UUID
        for i in range(16):
            atom.u.as_uuid.bytes[i] = uuid_bytes[i]
    elif isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value < 2 ** 64:
            raise CodecError(f"{name} {value} does not fit an AMQP ulong")
        atom.type = pn.PN_ULONG
        atom.u.as_ulong = <uint64_t>value
    else:
        raise CodecError(f"{name} must be str, bytes, int or UUID, "
                         f"not {type(value).__name__}")
    if correlation:
        pn.pn_message_set_correlation_id(msg, atom)
    else:
        pn.pn_message_set_id(msg, atom)
    return 0


cdef object _get_id(pn.pn_atom_t atom):
    if atom.type == pn.PN_STRING:
        return _utf8(atom.u.as_bytes, "message id")
    if atom.type == pn.PN_NULL or <int>atom.type == 0:
        return None
    if atom.type == pn.PN_BINARY:
        return PyBytes_FromStringAndSize(atom.u.as_bytes.start, atom.u.as_bytes.size)
    if atom.type == pn.PN_ULONG:
        return atom.u.as_ulong
    if atom.type == pn.PN_UUID:
        return _UUID(bytes=PyBytes_FromStringAndSize(atom.u.as_uuid.bytes, 16))
    raise CodecError(f"message id of unsupported type "
                     f"{(<bytes>pn.pn_type_name(atom.type)).decode('ascii')}")


cdef object _utf8(pn.pn_bytes_t b, str what):
    try:
        return PyUnicode_DecodeUTF8(b.start, b.size, NULL)
    except UnicodeDecodeError as exc:
        raise CodecError(f"{what} is not valid UTF-8: {exc}") from None


cdef object _opt_str(const char *value, str what):
    if value == NULL:
        return None
    return _utf8(pn.pn_bytes(strlen(value), value), what)


cdef bytes _non_durable(char *buf, size_t size):
    """The encoded message with its header's durable field an explicit false: the
    twin of fastamqp.message.mark_non_durable (whose comment says why and how)."""
    cdef const unsigned char *b = <const unsigned char *>buf
    cdef bytes out
    cdef char *dst
    if size >= 4 and b[0] == 0x00 and b[1] == 0x53 and b[2] == 0x70:
        if b[3] == 0x45:
            out = PyBytes_FromStringAndSize(NULL, size + 3)
            dst = PyBytes_AS_STRING(out)
            memcpy(dst, b"\x00\x53\x70\xc0\x02\x01\x42", 7)
            memcpy(dst + 7, buf + 4, size - 4)
            return out
        if size >= 7 and b[3] == 0xC0 and b[5] >= 1 and (b[6] == 0x40 or b[6] == 0x42):
            out = PyBytes_FromStringAndSize(buf, size)
            PyBytes_AS_STRING(out)[6] = 0x42
            return out
    raise CodecError("cannot mark the message non-durable: unexpected header "
                     + PyBytes_FromStringAndSize(buf, min(size, 8)).hex(" "))


cdef inline uint64_t _ttl_ms(object seconds) except? 0:
    cdef double ms = <double>seconds * 1000.0
    if ms <= 0:
        return 0
    if ms >= <double>_MAX_TTL_MS:
        return _MAX_TTL_MS
    return <uint64_t>ms


cdef int _start(_Scratch scratch, object address, object serializer, object data,
                list keep) except -1:
    """Reset the scratch message and give it its address and body."""
    cdef pn.pn_message_t *msg = scratch.msg
    cdef bytes body
    cdef bytes addr = _c_string("address", address)
    if serializer is _JSON or serializer == _JSON:
        body = _json_body(data)
    else:
        body = _dumps_msgpack(data)
    pn.pn_message_clear(msg)
    # inferred: a binary body becomes a data section, as the original's
    # Message(inferred=True) did; a string body is an amqp-value either way.
    pn.pn_message_set_inferred(msg, True)
    pn.pn_message_set_address(msg, PyBytes_AS_STRING(addr))
    cdef pn.pn_data_t *section = pn.pn_message_body(msg)
    if serializer is _JSON or serializer == _JSON:
        pn.pn_data_put_string(section, pn.pn_bytes(PyBytes_GET_SIZE(body),
                                                   PyBytes_AS_STRING(body)))
    else:
        pn.pn_message_set_content_type(msg, _MSGPACK_CONTENT_TYPE)
        pn.pn_data_put_binary(section, pn.pn_bytes(PyBytes_GET_SIZE(body),
                                                   PyBytes_AS_STRING(body)))
    keep.append(body)
    return 0


def encode_request(address, request, context, *, message_id=None, reply_to=None,
                   timeout=None, call_monitor_timeout=None, bint envelope=False,
                   serializer=_ser.JSON, now=None, bint non_durable=False):
    """RPC call or cast (``message_id``/``reply_to`` for calls), or a notification.
    ``non_durable``: the header says durable = false explicitly (message.py)."""
    if serializer is not _JSON:
        _check_serializer(serializer)
    cdef list keep = []
    if timeout is not None:
        _check_finite("timeout", timeout)
    if call_monitor_timeout is not None:
        _check_finite("call_monitor_timeout", call_monitor_timeout)
    if envelope:
        request = _envelope(_json_body(request).decode("utf-8"))
    data = {"request": request, "context": context}
    if call_monitor_timeout is not None:
        data["call_monitor_timeout"] = call_monitor_timeout
    cdef _Scratch scratch = _acquire()
    cdef pn.pn_message_t *msg = scratch.msg
    try:
        _start(scratch, address, serializer, data, keep)
        _set_request_properties(msg, message_id, reply_to, timeout, now, keep)
        return scratch.encode(non_durable)
    finally:
        _release(scratch)


cdef int _set_request_properties(pn.pn_message_t *msg, object message_id,
                                 object reply_to, object timeout, object now,
                                 list keep) except -1:
    cdef bytes reply_raw
    if message_id is not None:
        _set_id(msg, "message_id", message_id, False, keep)
    if reply_to is not None:
        reply_raw = _c_string("reply_to", reply_to)
        pn.pn_message_set_reply_to(msg, PyBytes_AS_STRING(reply_raw))
    if timeout:
        pn.pn_message_set_ttl(msg, <pn.pn_millis_t>_ttl_ms(timeout))
        wall = _wall_time() if now is None else now
        # Wall-clock ms (the original used time.monotonic(): REFERENCE §3.9 #1).
        pn.pn_message_set_expiry_time(msg, <int64_t>((wall + timeout) * 1000))
    return 0


def encode_notification(address, message, context, version=2.0, *,
                        serializer=_ser.JSON, bint non_durable=False):
    """A notification: enveloped for message version 2.0, as oslo's notifier sends."""
    return encode_request(address, message, context, envelope=(version == 2.0),
                          serializer=serializer, non_durable=non_durable)


def encode_reply(address, correlation_id, response=None, failure=None, *,
                 serializer=_ser.JSON, bint non_durable=False):
    """RPC reply: ``failure`` is the serialized remote exception (a JSON string)."""
    if serializer is not _JSON:
        _check_serializer(serializer)
    if failure is not None and not isinstance(failure, str):
        raise CodecError("failure must be the serialized exception (str)")
    cdef list keep = []
    cdef _Scratch scratch = _acquire()
    try:
        _start(scratch, address, serializer,
               {"failure": failure} if failure else {"response": response}, keep)
        _set_id(scratch.msg, "correlation_id", correlation_id, True, keep)
        return scratch.encode(non_durable)
    finally:
        _release(scratch)


def encode_heartbeat(address, correlation_id, ttl, *, bint non_durable=False):
    """Call-monitor heartbeat: no body section, just correlation-id and ttl."""
    cdef list keep = []
    if ttl is not None:
        _check_finite("ttl", ttl)
    cdef bytes addr = _c_string("address", address)
    cdef _Scratch scratch = _acquire()
    cdef pn.pn_message_t *msg = scratch.msg
    try:
        pn.pn_message_clear(msg)
        pn.pn_message_set_address(msg, PyBytes_AS_STRING(addr))
        _set_id(msg, "correlation_id", correlation_id, True, keep)
        if ttl:
            pn.pn_message_set_ttl(msg, <pn.pn_millis_t>_ttl_ms(ttl))
        return scratch.encode(non_durable)
    finally:
        _release(scratch)


def decode(data, Py_ssize_t max_size=_DEFAULT_MAX):
    """Decode one AMQP message (the bytes of a transfer) into a DecodedMessage."""
    cdef const unsigned char[::1] view
    if isinstance(data, bytes):
        view = <bytes>data
    elif isinstance(data, (bytearray, memoryview)):
        try:
            view = data
        except (ValueError, TypeError, BufferError) as exc:
            raise CodecError(f"cannot read the input buffer: {exc}") from None
    else:
        raise CodecError(f"expected bytes, not {type(data).__name__}")
    cdef Py_ssize_t size = view.shape[0]
    if size > max_size:
        raise CodecError(f"message of {size} bytes exceeds the limit of {max_size} bytes")
    if size == 0:
        raise CodecError("not an AMQP message: empty input")
    cdef _Scratch scratch = _acquire()
    try:
        _check_sections(scratch.walker, <const char *>&view[0], size)
        return _decode(scratch.msg, view, size)
    finally:
        _release(scratch)


cdef int _check_sections(pn.pn_data_t *walker, const char *data, Py_ssize_t size) except -1:
    """Walk the top-level sections with Proton's strict pn_data_decode.

    pn_message_decode accepts truncated and trailing bytes silently (a reply cut short
    decodes as a heartbeat). The rule is message.check_section, shared with the pure
    codec; the plain well-ordered case is recognised here without calling it.
    """
    cdef Py_ssize_t offset = 0
    cdef Py_ssize_t used
    cdef int index = 0
    cdef int previous = -1
    cdef int code
    while offset < size:
        pn.pn_data_clear(walker)
        used = pn.pn_data_decode(walker, data + offset, <size_t>(size - offset))
        if used < 0:
            raise CodecError(f"not an AMQP message: {_data_error(<int>used)} at offset "
                             f"{offset}")
        code = -1
        pn.pn_data_rewind(walker)
        if pn.pn_data_next(walker) and pn.pn_data_type(walker) == pn.PN_DESCRIBED:
            pn.pn_data_enter(walker)
            if pn.pn_data_next(walker) and pn.pn_data_type(walker) == pn.PN_ULONG:
                code = <int>min(pn.pn_data_get_ulong(walker), <uint64_t>0x7fffffff)
                if code == 0x74:
                    _check_property_keys(walker, offset)
        if not (0x70 <= code <= 0x78 and code > previous
                and not (0x75 <= previous <= 0x77 and 0x75 <= code <= 0x77)):
            _check_section(index, offset, None if code < 0 else code,
                           None if previous < 0 else previous)
        previous = code
        offset += used
        index += 1
    return 0


cdef int _check_property_keys(pn.pn_data_t *walker, Py_ssize_t offset) except -1:
    cdef size_t count, i
    cdef pn.pn_type_t kind
    if not pn.pn_data_next(walker) or pn.pn_data_type(walker) != pn.PN_MAP:
        return 0  # a null or non-map value: pn_message_decode judges it
    count = pn.pn_data_get_map(walker)
    pn.pn_data_enter(walker)
    for i in range(0, count, 2):
        pn.pn_data_next(walker)
        kind = pn.pn_data_type(walker)
        if kind != pn.PN_STRING:
            raise _app_property_key_error(
                offset, (<bytes>pn.pn_type_name(kind)).decode("ascii").lower()[3:])
        pn.pn_data_next(walker)
    return 0


cdef str _data_error(int rc):
    if rc == pn.PN_UNDERFLOW:
        return "truncated input (PN_UNDERFLOW)"
    if rc == pn.PN_ARG_ERR:
        return "invalid encoding (PN_ARG_ERR)"
    return f"invalid encoding ({(<bytes>pn.pn_code(rc)).decode('ascii', 'replace')})"


cdef object _decode(pn.pn_message_t *msg, const unsigned char[::1] view, Py_ssize_t size):
    # pn_message_decode does not clear first: without this, fields absent from this
    # message would keep the previous message's values.
    pn.pn_message_clear(msg)
    cdef int rc = pn.pn_message_decode(msg, <const char *>&view[0], <size_t>size)
    if rc != 0:
        raise CodecError(f"not an AMQP message: {_pn_error(msg, rc)}")

    content_type = _opt_str(pn.pn_message_get_content_type(msg), "content-type")
    address = _opt_str(pn.pn_message_get_address(msg), "to address")
    reply_to = _opt_str(pn.pn_message_get_reply_to(msg), "reply-to address")
    message_id = _get_id(pn.pn_message_get_id(msg))
    correlation_id = _get_id(pn.pn_message_get_correlation_id(msg))
    ttl_ms = pn.pn_message_get_ttl(msg)
    expiry_ms = pn.pn_message_get_expiry_time(msg)

    cdef pn.pn_data_t *section = pn.pn_message_body(msg)
    cdef pn.pn_type_t kind
    cdef pn.pn_bytes_t raw
    serializer = None
    body = None
    has_body = False
    pn.pn_data_rewind(section)
    if pn.pn_data_next(section):
        has_body = True
        kind = pn.pn_data_type(section)
        if kind == pn.PN_STRING:
            if content_type in _MSGPACK_TYPES:
                raise CodecError("msgpack content-type on a string (amqp-value) body")
            raw = pn.pn_data_get_string(section)
            serializer = _JSON
            body = _json_value(raw.start, raw.size)
        elif kind == pn.PN_BINARY:
            raw = pn.pn_data_get_binary(section)
            if content_type in _MSGPACK_TYPES:
                serializer = _MSGPACK
                body = _loads_msgpack(PyBytes_FromStringAndSize(raw.start, raw.size))
            elif content_type is None or content_type in _JSON_TYPES:
                serializer = _JSON
                body = _json_value(raw.start, raw.size)
            else:
                raise CodecError(f"unsupported content-type {content_type!r} "
                                 f"for a binary body")
        elif kind == pn.PN_NULL:
            has_body = False
        elif kind == pn.PN_LIST and pn.pn_message_is_inferred(msg):
            raise CodecError("wrong body section: amqp-sequence, expected amqp-value "
                             "(JSON text) or data")
        else:
            raise CodecError(f"wrong body: amqp-value holds "
                             f"{(<bytes>pn.pn_type_name(kind)).decode('ascii')}, "
                             f"expected a string (JSON text)")
    return _build(address, reply_to, message_id, correlation_id, ttl_ms, expiry_ms,
                  content_type, serializer, has_body, body, _loads_json)


cdef extern from "<sys/random.h>" nogil:
    ssize_t getrandom(void *buf, size_t buflen, unsigned int flags)
cdef extern from "<unistd.h>" nogil:
    int getpid()

# Random bytes for message ids, taken 16 at a time (the GIL guards them). uuid.uuid4()
# costs about 2.7 µs, a third of a cast's driver time; this about 0.2 µs. A forked
# child must not repeat its parent's ids: the pool belongs to the pid that filled it.
cdef enum:
    _POOL = 4096
cdef unsigned char _pool[_POOL]
cdef int _pool_pos = _POOL
cdef int _pool_pid = 0


def new_message_id():
    """The id the original driver gave a call: a uuid4 hex string (random, with the
    version and variant bits of RFC 4122)."""
    global _pool_pos, _pool_pid
    cdef char out[32]
    cdef const char *hexdigits = b"0123456789abcdef"
    cdef unsigned char b
    cdef int i
    if _pool_pos + 16 > _POOL or _pool_pid != getpid():
        if getrandom(_pool, _POOL, 0) != _POOL:
            return _uuid4().hex          # no entropy source answered: the stdlib's
        _pool_pos = 0
        _pool_pid = getpid()
    for i in range(16):
        b = _pool[_pool_pos + i]
        if i == 6:
            b = (b & 0x0F) | 0x40        # version 4
        elif i == 8:
            b = (b & 0x3F) | 0x80        # RFC 4122 variant
        out[2 * i] = hexdigits[b >> 4]
        out[2 * i + 1] = hexdigits[b & 0x0F]
    _pool_pos += 16
    return PyUnicode_DecodeUTF8(out, 32, NULL)
