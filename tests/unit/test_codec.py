"""The message codec: round trips, C/pure equivalence, compatibility with the original
oslo.messaging AMQP 1.0 driver's wire format (REFERENCE §3.8), the wall-clock expiry fix
(§3.9 #1), and the errors for bad input.

Every behavioural test runs on both engines through the ``codec`` fixture (conftest.py).
"The original way" is reproduced here with python-qpid-proton exactly as
oslo_messaging/_drivers/impl_amqp1.py 14.9.3 did it (marshal_request, marshal_response,
unmarshal_request, unmarshal_response, ProtonIncomingMessage.heartbeat, send()), with
json.dumps standing in for oslo_serialization.jsonutils.dumps (same text for JSON data).
Our JSON text is not the stdlib's byte for byte (orjson writes it without spaces and
with raw UTF-8, tests/unit/test_json.py); what must agree is what every side decodes.
"""
import json
import math
import time
import os
import uuid

import cproton
import proton
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastamqp.exceptions import CodecError
from fastamqp.message import HEARTBEAT, REPLY, REQUEST, MAX_TTL_MS, DecodedMessage

from support import amqp_strict

# ---------------------------------------------------------------------------------------
# strategies

json_scalars = (st.none() | st.booleans()
                | st.integers(min_value=-2 ** 63, max_value=2 ** 63 - 1)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20))
json_values = st.recursive(
    json_scalars,
    lambda children: (st.lists(children, max_size=4)
                      | st.dictionaries(st.text(max_size=10), children, max_size=4)),
    max_leaves=15)
json_objects = st.dictionaries(st.text(max_size=10), json_values, max_size=5)

# A field of an oslo Target can hold anything but NUL (Proton fields are C strings).
names = st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)),
                min_size=1, max_size=40)
addresses = names | st.sampled_from([
    "openstack.org/om/rpc/anycast/nova/compute",
    "openstack.org/om/notify/anycast/nova/notifications.info",
    "exclusive/compute.höst-ü", "unicast/サーバ/方法", "broadcast/🐇/fanout"])
message_ids = (st.builds(lambda: uuid.uuid4().hex) | names | st.binary(max_size=20)
               | st.integers(min_value=0, max_value=2 ** 64 - 1) | st.uuids())
timeouts = (st.integers(min_value=1, max_value=3600)
            | st.floats(min_value=0.001, max_value=4 * 10 ** 6))
nows = st.floats(min_value=0, max_value=4 * 10 ** 9)
monitor_timeouts = st.none() | st.integers(min_value=1, max_value=3600) | st.floats(
    min_value=0.1, max_value=3600)
serializers = st.sampled_from(["json", "msgpack"])

TRACE = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
         "tracestate": "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE",
         "baggage": "userId=alice,serverNode=DF%2028,isProduction=false"}
contexts = st.builds(lambda base, otel: {**base, **otel}, json_objects,
                     st.dictionaries(st.sampled_from(sorted(TRACE)),
                                     st.sampled_from(list(TRACE.values())) | st.text()))
rpc_requests = st.fixed_dictionaries(
    {"method": st.text(max_size=20), "args": json_objects},
    optional={"namespace": st.none() | st.text(max_size=10),
              "version": st.sampled_from(["1.0", "5.23", "2.0"])})
notifications = st.fixed_dictionaries(
    {"message_id": st.builds(lambda: str(uuid.uuid4())),
     "publisher_id": names, "event_type": st.text(max_size=30),
     "priority": st.sampled_from(["INFO", "WARN", "ERROR", "SAMPLE"]),
     "payload": json_values, "timestamp": st.text(max_size=30)})


def expected_ttl(seconds):
    """What decode returns for a ttl/timeout given to an encoder (ms, truncated)."""
    ms = min(max(int(seconds * 1000), 0), MAX_TTL_MS)
    return ms / 1000.0 if ms else None


def normalized(value):
    """JSON and msgpack both turn tuples into lists."""
    return json.loads(json.dumps(value))


def content_type_of(msg):
    # python-qpid-proton 0.40 reports an absent content-type as symbol('None')
    return cproton.pn_message_get_content_type(msg._msg)


def proton_decode(data):
    msg = proton.Message()
    msg.decode(data)
    return msg


def expect_error(codec, data, phrase, **kw):
    with pytest.raises(CodecError) as info:
        codec.decode(data, **kw)
    assert phrase.lower() in str(info.value).lower(), str(info.value)
    return info.value


def xfail_for(request, codec, implementations, reason):
    if codec.IMPLEMENTATION in implementations:
        request.applymarker(pytest.mark.xfail(strict=True, reason=reason))


# ---------------------------------------------------------------------------------------
# round trips


@given(address=addresses, request=rpc_requests, context=contexts, message_id=message_ids,
       reply_to=addresses, timeout=timeouts, monitor=monitor_timeouts, now=nows,
       serializer=serializers)
def test_call_round_trip(codec, address, request, context, message_id, reply_to, timeout,
                         monitor, now, serializer):
    data = codec.encode_request(address, request, context, message_id=message_id,
                                reply_to=reply_to, timeout=timeout,
                                call_monitor_timeout=monitor, serializer=serializer,
                                now=now)
    assert isinstance(data, bytes)
    msg = codec.decode(data)
    assert isinstance(msg, DecodedMessage)
    assert msg.kind == REQUEST
    assert msg.address == address
    assert msg.reply_to == reply_to
    assert msg.message_id == message_id
    assert type(msg.message_id) is type(message_id)
    assert msg.correlation_id is None
    assert msg.ttl == expected_ttl(timeout)
    assert msg.expiry_time == int((now + timeout) * 1000) / 1000.0
    assert msg.serializer == serializer
    assert msg.content_type == (None if serializer == "json" else "application/msgpack")
    assert msg.request == normalized(request)
    assert msg.context == normalized(context)
    assert msg.call_monitor_timeout == monitor
    assert msg.enveloped is False
    assert msg.response is None and msg.failure is None


@given(address=addresses, request=rpc_requests | json_objects, context=contexts,
       serializer=serializers)
def test_cast_round_trip(codec, address, request, context, serializer):
    msg = codec.decode(codec.encode_request(address, request, context,
                                            serializer=serializer))
    assert msg.kind == REQUEST
    assert (msg.address, msg.request, msg.context) == (address, normalized(request),
                                                       normalized(context))
    assert msg.reply_to is None and msg.message_id is None and msg.correlation_id is None
    assert msg.ttl is None and msg.expiry_time is None
    assert msg.call_monitor_timeout is None and msg.enveloped is False
    assert msg.serializer == serializer


@given(address=addresses, correlation_id=message_ids, response=json_values,
       serializer=serializers)
def test_reply_response_round_trip(codec, address, correlation_id, response, serializer):
    msg = codec.decode(codec.encode_reply(address, correlation_id, response=response,
                                          serializer=serializer))
    assert msg.kind == REPLY
    assert msg.address == address
    assert msg.correlation_id == correlation_id
    assert msg.response == normalized(response)
    assert msg.failure is None
    assert msg.message_id is None and msg.reply_to is None and msg.ttl is None
    assert msg.request is None and msg.context is None
    assert msg.serializer == serializer


@given(address=addresses, correlation_id=message_ids, failure=st.text(min_size=1),
       serializer=serializers)
def test_reply_failure_round_trip(codec, address, correlation_id, failure, serializer):
    msg = codec.decode(codec.encode_reply(address, correlation_id, failure=failure,
                                          serializer=serializer))
    assert msg.kind == REPLY
    assert msg.correlation_id == correlation_id
    assert msg.failure == failure
    assert msg.response is None


def test_reply_failure_serialized_remote_exception(codec):
    # what oslo's serialize_remote_exception produces: JSON text nested as a string
    failure = json.dumps({"class": "RemoteError", "module": "oslo_messaging.rpc.client",
                          "message": "boom ü", "tb": ["Traceback...", "  line 1"],
                          "args": ["boom ü"], "kwargs": {}})
    msg = codec.decode(codec.encode_reply("r", "abc", failure=failure))
    assert msg.failure == failure
    assert json.loads(msg.failure)["message"] == "boom ü"


def test_reply_with_none_response(codec):
    msg = codec.decode(codec.encode_reply("r", "abc"))
    assert (msg.kind, msg.response, msg.failure) == (REPLY, None, None)


@given(address=addresses, correlation_id=message_ids,
       ttl=st.none() | st.just(0) | timeouts)
def test_heartbeat_round_trip(codec, address, correlation_id, ttl):
    data = codec.encode_heartbeat(address, correlation_id, ttl)
    msg = codec.decode(data)
    assert msg.kind == HEARTBEAT
    assert msg.address == address
    assert msg.correlation_id == correlation_id
    assert msg.ttl == (expected_ttl(ttl) if ttl else None)
    assert msg.request is None and msg.response is None and msg.failure is None
    assert msg.serializer is None and msg.content_type is None
    assert proton_decode(data).body is None  # no body section at all


@given(address=addresses, message=notifications, context=contexts, serializer=serializers)
def test_notification_v2_round_trip(codec, address, message, context, serializer):
    msg = codec.decode(codec.encode_notification(address, message, context, version=2.0,
                                                 serializer=serializer))
    assert msg.kind == REQUEST
    assert msg.enveloped is True
    assert msg.request == normalized(message)  # the envelope is unwrapped
    assert msg.context == normalized(context)
    assert msg.message_id is None and msg.reply_to is None and msg.ttl is None


@given(address=addresses, message=notifications, context=contexts, serializer=serializers)
def test_notification_v1_round_trip(codec, address, message, context, serializer):
    msg = codec.decode(codec.encode_notification(address, message, context, version=1.0,
                                                 serializer=serializer))
    assert msg.kind == REQUEST
    assert msg.enveloped is False
    assert msg.request == normalized(message)
    assert msg.context == normalized(context)


def test_tuples_become_lists(codec):
    for serializer in ("json", "msgpack"):
        msg = codec.decode(codec.encode_request("a", {"args": (1, (2, 3))}, {"t": ()},
                                                serializer=serializer))
        assert msg.request == {"args": [1, [2, 3]]}
        assert msg.context == {"t": []}


def test_otel_context_travels_unchanged(codec):
    context = dict(TRACE, user_id="u", request_id="req-" + uuid.uuid4().hex,
                   roles=["admin", "member"], is_admin=True)
    for serializer in ("json", "msgpack"):
        msg = codec.decode(codec.encode_request("a", {"method": "m", "args": {}}, context,
                                                serializer=serializer))
        assert msg.context == context


def test_none_context_decodes_as_empty(codec):
    msg = codec.decode(codec.encode_request("a", {"method": "m"}, None))
    assert msg.context == {}


def test_bytearray_and_memoryview_input(codec):
    data = codec.encode_request("a", {"method": "m"}, {"k": "v"}, message_id="id")
    expected = codec.decode(data)
    assert codec.decode(bytearray(data)) == expected
    assert codec.decode(memoryview(data)) == expected


def test_decode_is_stateless(codec):
    """A decode must not see fields of the message decoded before it."""
    call = codec.encode_request("to", {"m": 1}, {}, message_id="mid", reply_to="rt",
                                timeout=30, now=1e9)
    cast = codec.encode_request("to2", {"m": 2}, {})
    reply = codec.encode_reply("r", "cid", response=1, serializer="msgpack")
    for before in (call, reply):
        codec.decode(before)
        msg = codec.decode(cast)
        assert (msg.message_id, msg.reply_to, msg.ttl, msg.expiry_time, msg.correlation_id,
                msg.content_type) == (None, None, None, None, None, None)
        codec.decode(before)
        with pytest.raises(CodecError):
            codec.decode(b"\xa6\xcd")   # garbage must not become the previous message
        codec.decode(before)
        with pytest.raises(CodecError):
            codec.decode(proton_message_bytes(address="x"))


def test_new_message_id(codec):
    # Past the C codec's pool of random bytes (4096 bytes: 256 ids) several times.
    ids = {codec.new_message_id() for _ in range(5000)}
    assert len(ids) == 5000
    for value in ids:
        assert isinstance(value, str) and len(value) == 32
        parsed = uuid.UUID(hex=value)
        assert parsed.hex == value and parsed.version == 4
        assert parsed.variant == uuid.RFC_4122


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_makes_other_message_ids(codec):
    codec.new_message_id()          # the parent has random bytes left in its pool
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(write_end, " ".join(
                codec.new_message_id() for _ in range(10)).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    child = set(os.read(read_end, 4096).decode().split())
    os.close(read_end)
    parent = {codec.new_message_id() for _ in range(10)}
    assert len(child) == 10 and not child & parent


def test_ttl_clamped_to_header_range(codec):
    msg = codec.decode(codec.encode_request("a", {}, {}, timeout=10 ** 9, now=0))
    assert msg.ttl == MAX_TTL_MS / 1000.0
    assert msg.expiry_time == 10 ** 9
    msg = codec.decode(codec.encode_heartbeat("a", "c", 10 ** 9))
    assert msg.ttl == MAX_TTL_MS / 1000.0


# ---------------------------------------------------------------------------------------
# C and pure produce the same bytes and the same results (both call the JSON libraries of
# fastamqp.serializers with the same fallbacks; the wire contract is the decoded results)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(["call", "cast", "reply", "failure", "heartbeat", "notify1",
                             "notify2"]),
       address=addresses, request=rpc_requests, context=contexts, message_id=message_ids,
       reply_to=addresses, timeout=timeouts, monitor=monitor_timeouts, now=nows,
       response=json_values, serializer=serializers, non_durable=st.booleans())
def test_c_and_python_identical(both_codecs, kind, address, request, context, message_id,
                                reply_to, timeout, monitor, now, response, serializer,
                                non_durable):
    outputs, decoded = [], []
    for codec in both_codecs:
        if kind == "call":
            data = codec.encode_request(address, request, context, message_id=message_id,
                                        reply_to=reply_to, timeout=timeout,
                                        call_monitor_timeout=monitor, now=now,
                                        serializer=serializer, non_durable=non_durable)
        elif kind == "cast":
            data = codec.encode_request(address, request, context, serializer=serializer,
                                        non_durable=non_durable)
        elif kind == "reply":
            data = codec.encode_reply(address, message_id, response=response,
                                      serializer=serializer, non_durable=non_durable)
        elif kind == "failure":
            data = codec.encode_reply(address, message_id, failure=json.dumps(response),
                                      serializer=serializer, non_durable=non_durable)
        elif kind == "heartbeat":
            data = codec.encode_heartbeat(address, message_id, timeout,
                                          non_durable=non_durable)
        else:
            data = codec.encode_notification(address, request, context,
                                             version=2.0 if kind == "notify2" else 1.0,
                                             serializer=serializer,
                                             non_durable=non_durable)
        outputs.append(data)
    assert outputs[0] == outputs[1]
    # and each decodes the other's bytes (the same here) to equal results
    decoded = [codec.decode(outputs[0]) for codec in both_codecs]
    assert decoded[0] == decoded[1]
    assert decoded[0].as_dict() == decoded[1].as_dict()


def test_decoded_message_equality_and_repr():
    a = DecodedMessage(REQUEST, "a", None, "id", None, None, None, None, "json")
    b = DecodedMessage(REQUEST, "a", None, "id", None, None, None, None, "json")
    assert a == b
    b.context = {"auth_token": "secret"}
    assert a != b
    assert "secret" not in repr(b)
    assert (a == 1) is False


# ---------------------------------------------------------------------------------------
# cross-check 1: fastamqp's bytes read the way the original driver read them


def original_deserialize_msg(msg):
    """common.deserialize_msg (oslo.messaging 14.9.3) for the 2.0 envelope."""
    if not isinstance(msg, dict):
        return msg
    if not all(key in msg for key in ("oslo.version", "oslo.message")):
        return msg
    assert msg["oslo.version"] == "2.0"
    return json.loads(msg["oslo.message"])


def original_unmarshal_request(message):
    data = json.loads(message.body)
    msg = original_deserialize_msg(data.get("request"))
    return msg, data.get("context"), data.get("call_monitor_timeout")


def original_unmarshal_response(message):
    data = json.loads(message.body)
    failure = data.get("failure")
    if failure is not None:
        return ("failure", failure)
    return ("response", data.get("response"))


@given(address=addresses, request=rpc_requests, context=contexts, reply_to=addresses,
       timeout=st.integers(min_value=1, max_value=3600), monitor=monitor_timeouts)
def test_original_reads_our_call(codec, address, request, context, reply_to, timeout,
                                 monitor):
    message_id = codec.new_message_id()
    now = time.time()
    data = codec.encode_request(address, request, context, message_id=message_id,
                                reply_to=reply_to, timeout=timeout,
                                call_monitor_timeout=monitor)
    msg = proton_decode(data)
    assert isinstance(msg.body, str)  # amqp-value string, as §3.8 says
    assert original_unmarshal_request(msg) == (normalized(request), normalized(context),
                                               monitor)
    # ProtonIncomingMessage: _reply_to = message.reply_to, _correlation_id = message.id
    assert msg.reply_to == reply_to
    assert msg.id == message_id
    assert msg.address == address
    assert msg.ttl == timeout
    assert abs(msg.expiry_time - (now + timeout)) < 5  # wall clock (§3.9 #1 fixed)
    assert msg.correlation_id is None


@given(address=addresses, request=rpc_requests, context=contexts)
def test_original_reads_our_cast(codec, address, request, context):
    msg = proton_decode(codec.encode_request(address, request, context))
    assert original_unmarshal_request(msg) == (normalized(request), normalized(context),
                                               None)
    assert msg.id is None and msg.reply_to is None and msg.ttl == 0
    assert msg.address == address


@given(address=addresses, response=json_values, failure=st.none() | st.text(min_size=1))
def test_original_reads_our_reply(codec, address, response, failure):
    correlation_id = uuid.uuid4().hex
    msg = proton_decode(codec.encode_reply(address, correlation_id, response=response,
                                           failure=failure))
    # the client looks the reply up by message.correlation_id
    assert msg.correlation_id == correlation_id
    assert msg.address == address
    if failure is None:
        assert original_unmarshal_response(msg) == ("response", normalized(response))
    else:
        assert original_unmarshal_response(msg) == ("failure", failure)


def test_original_reads_our_heartbeat(codec):
    msg = proton_decode(codec.encode_heartbeat("reply/addr", "abcdef", 30))
    # RPCMonitoredCallTask: body None -> heartbeat; correlation_id finds the call
    assert msg.body is None
    assert msg.correlation_id == "abcdef"
    assert msg.ttl == 30
    assert msg.address == "reply/addr"


@given(address=addresses, message=notifications, context=contexts)
def test_original_reads_our_notification_v2(codec, address, message, context):
    msg = proton_decode(codec.encode_notification(address, message, context, version=2.0))
    body = json.loads(msg.body)
    # the request is the envelope deserialize_msg expects, with a JSON *string* inside
    assert set(body["request"]) == {"oslo.version", "oslo.message"}
    assert body["request"]["oslo.version"] == "2.0"
    assert isinstance(body["request"]["oslo.message"], str)
    assert json.loads(body["request"]["oslo.message"]) == normalized(message)
    assert original_unmarshal_request(msg) == (normalized(message), normalized(context),
                                               None)
    assert set(body) == {"request", "context"}


@given(address=addresses, message=notifications, context=contexts)
def test_original_reads_our_notification_v1(codec, address, message, context):
    msg = proton_decode(codec.encode_notification(address, message, context, version=1.0))
    assert json.loads(msg.body)["request"] == normalized(message)
    assert original_unmarshal_request(msg) == (normalized(message), normalized(context),
                                               None)


def test_json_text_reads_as_the_originals(codec):
    """json.loads of our body text is json.loads of jsonutils.dumps' (json.dumps'), key
    order included; the text itself may differ in spacing and escaping."""
    request = {"method": "echo", "args": {"x": [1, 2.5, None, "ü", -0.0, 2 ** 64 - 1]},
               "version": "1.0"}
    context = dict(TRACE, user="u")
    msg = proton_decode(codec.encode_request("a", request, context,
                                             call_monitor_timeout=10))
    expected = json.loads(json.dumps({"request": request, "context": context,
                                      "call_monitor_timeout": 10}))
    got = json.loads(msg.body)
    assert got == expected
    assert list(got["request"]["args"]) == list(expected["request"]["args"])
    assert repr(got["request"]["args"]["x"][4]) == "-0.0"
    msg = proton_decode(codec.encode_reply("a", "c", response={"r": 1}))
    assert json.loads(msg.body) == {"response": {"r": 1}}


# ---------------------------------------------------------------------------------------
# cross-check 2: messages built the original way, read by fastamqp


def original_request(address, request, context, *, envelope=False, monitor=None,
                     timeout=None, call=False, reply_to=None):
    msg = proton.Message(inferred=True)       # marshal_request
    if envelope:
        request = {"oslo.version": "2.0", "oslo.message": json.dumps(request)}
    data = {"request": request, "context": context}
    if monitor is not None:
        data["call_monitor_timeout"] = monitor
    msg.body = json.dumps(data)
    if timeout:                               # send()
        msg.ttl = timeout
        msg.expiry_time = math.ceil(time.monotonic() + timeout)  # the §3.9 #1 bug
    if call:                                  # Replies.prepare_for_response
        msg.id = uuid.uuid4().hex
        msg.reply_to = reply_to
    msg.address = address                     # Sender._send
    return msg


def original_reply(address, correlation_id, response=None, failure=None):
    msg = proton.Message(inferred=True)       # marshal_response
    data = {"failure": failure} if failure else {"response": response}
    msg.body = json.dumps(data)
    msg.correlation_id = correlation_id       # ProtonIncomingMessage.reply
    msg.address = address
    return msg


def original_heartbeat(address, correlation_id, client_timeout):
    msg = proton.Message()                    # ProtonIncomingMessage.heartbeat
    msg.correlation_id = correlation_id
    msg.ttl = client_timeout
    msg.address = address
    return msg


@given(address=addresses, request=rpc_requests, context=contexts, reply_to=addresses,
       timeout=st.integers(min_value=1, max_value=3600), monitor=monitor_timeouts)
def test_we_read_original_call(codec, address, request, context, reply_to, timeout,
                               monitor):
    orig = original_request(address, request, context, monitor=monitor, timeout=timeout,
                            call=True, reply_to=reply_to)
    expiry_s = orig.expiry_time
    msg = codec.decode(bytes(orig.encode()))
    assert msg.kind == REQUEST
    assert msg.address == address and msg.reply_to == reply_to
    assert msg.message_id == orig.id
    assert msg.ttl == timeout
    # the original's monotonic deadline: a small number, still just a timestamp
    assert msg.expiry_time == expiry_s
    assert msg.expiry_time < time.time() - 10 ** 6 or time.monotonic() > 10 ** 8
    assert msg.request == normalized(request)
    assert msg.context == normalized(context)
    assert msg.call_monitor_timeout == monitor
    assert msg.serializer == "json" and msg.enveloped is False


def test_we_read_original_monotonic_expiry_exactly(codec):
    orig = original_request("a", {"method": "m"}, {}, timeout=60, call=True,
                            reply_to="r")
    orig.expiry_time = 12345    # ceil(monotonic()+timeout) on a host up for ~3 hours
    msg = codec.decode(bytes(orig.encode()))
    assert msg.expiry_time == 12345.0
    assert msg.ttl == 60


@given(address=addresses, request=rpc_requests | json_objects, context=contexts)
def test_we_read_original_cast(codec, address, request, context):
    msg = codec.decode(bytes(original_request(address, request, context).encode()))
    assert (msg.kind, msg.request, msg.context) == (REQUEST, normalized(request),
                                                    normalized(context))
    assert msg.message_id is None and msg.ttl is None and msg.expiry_time is None


@given(address=addresses, response=json_values, failure=st.none() | st.text(min_size=1))
def test_we_read_original_reply(codec, address, response, failure):
    correlation_id = uuid.uuid4().hex
    msg = codec.decode(bytes(original_reply(address, correlation_id, response,
                                            failure).encode()))
    assert msg.kind == REPLY
    assert msg.correlation_id == correlation_id
    if failure:
        assert (msg.failure, msg.response) == (failure, None)
    else:
        assert (msg.failure, msg.response) == (None, normalized(response))


@given(address=addresses, timeout=st.integers(min_value=1, max_value=3600))
def test_we_read_original_heartbeat(codec, address, timeout):
    correlation_id = uuid.uuid4().hex
    msg = codec.decode(bytes(original_heartbeat(address, correlation_id,
                                                timeout).encode()))
    assert msg.kind == HEARTBEAT
    assert (msg.correlation_id, msg.ttl, msg.address) == (correlation_id, timeout, address)


@given(address=addresses, message=notifications, context=contexts,
       version=st.sampled_from([1.0, 2.0]))
def test_we_read_original_notification(codec, address, message, context, version):
    orig = original_request(address, message, context, envelope=(version == 2.0))
    msg = codec.decode(bytes(orig.encode()))
    assert msg.kind == REQUEST
    assert msg.request == normalized(message)
    assert msg.enveloped is (version == 2.0)


def test_original_and_fastamqp_messages_equal(codec):
    """Apart from the expiry clock, a cast, a reply and a heartbeat are the original's
    messages: every section the same, the body the same JSON value (its text may be
    spaced differently); a heartbeat, which has no body, is byte-identical."""
    request, context = {"method": "m", "args": {"a": 1}}, {"user": "u"}

    def same_message(ours, original):
        ours_msg, original_msg = proton_decode(ours), proton_decode(bytes(original.encode()))
        assert json.loads(ours_msg.body) == json.loads(original_msg.body)
        ours_msg.body = original_msg.body = None
        assert bytes(ours_msg.encode()) == bytes(original_msg.encode())

    same_message(codec.encode_request("addr", request, context),
                 original_request("addr", request, context))
    same_message(codec.encode_reply("addr", "cid", response=[1, 2]),
                 original_reply("addr", "cid", [1, 2]))
    notification = proton_decode(codec.encode_notification("addr", request, context,
                                                           version=2.0))
    envelope = json.loads(notification.body)["request"]
    assert json.loads(envelope.pop("oslo.message")) == request
    assert envelope == {"oslo.version": "2.0"}
    same_message(codec.encode_notification("addr", request, context, version=1.0),
                 original_request("addr", request, context))
    assert codec.encode_heartbeat("addr", "cid", 30) == bytes(
        original_heartbeat("addr", "cid", 30).encode())


# ---------------------------------------------------------------------------------------
# the expiry fix: wall clock, not monotonic


@pytest.mark.parametrize("timeout", [1, 30, 60.5, 3600])
def test_expiry_is_wall_clock(codec, timeout):
    msg = codec.decode(codec.encode_request("a", {}, {}, message_id="x", reply_to="r",
                                            timeout=timeout))
    assert abs(msg.expiry_time - (time.time() + timeout)) < 5
    wire = proton_decode(codec.encode_request("a", {}, {}, timeout=timeout))
    assert abs(wire.expiry_time - (time.time() + timeout)) < 5


def test_explicit_now(codec):
    msg = codec.decode(codec.encode_request("a", {}, {}, timeout=30, now=1_700_000_000.25))
    assert msg.expiry_time == 1_700_000_030.25
    assert msg.ttl == 30


# ---------------------------------------------------------------------------------------
# header and properties exactly as REFERENCE §3.8


def _all_kinds(codec, serializer, non_durable=False):
    marked = {"non_durable": non_durable}
    return {
        "call": codec.encode_request("to", {"method": "m"}, {}, message_id="id",
                                     reply_to="rt", timeout=30, serializer=serializer,
                                     **marked),
        "cast": codec.encode_request("to", {"method": "m"}, {}, serializer=serializer,
                                     **marked),
        "reply": codec.encode_reply("to", "cid", response=1, serializer=serializer,
                                    **marked),
        "failure": codec.encode_reply("to", "cid", failure="{}", serializer=serializer,
                                      **marked),
        "notify": codec.encode_notification("to", {"event_type": "e"}, {},
                                            serializer=serializer, **marked),
        "heartbeat": codec.encode_heartbeat("to", "cid", 30, **marked),
    }


@pytest.mark.parametrize("serializer", ["json", "msgpack"])
def test_header_and_properties(codec, serializer):
    for kind, data in _all_kinds(codec, serializer).items():
        msg = proton_decode(data)
        assert msg.durable is False, kind
        assert msg.priority == 4, kind
        assert msg.first_acquirer is False and msg.delivery_count == 0, kind
        assert not msg.annotations, kind
        assert not msg.instructions, kind
        assert not msg.properties, kind          # application-properties
        assert msg.subject is None and msg.group_id is None, kind
        assert msg.user_id == b"", kind
        assert msg.creation_time == 0, kind
        assert msg.address == "to", kind
        assert (msg.id is not None) == (kind == "call"), kind
        assert (msg.reply_to is not None) == (kind == "call"), kind
        assert (msg.correlation_id is not None) == (kind in ("reply", "failure",
                                                             "heartbeat")), kind
        assert (msg.ttl != 0) == (kind in ("call", "heartbeat")), kind
        assert (msg.expiry_time != 0) == (kind == "call"), kind
        if kind == "heartbeat":
            assert content_type_of(msg) is None
            assert msg.body is None
        elif serializer == "json":
            assert content_type_of(msg) is None, kind
            assert isinstance(msg.body, str) and not msg.inferred, kind   # amqp-value
        else:
            assert content_type_of(msg) == "application/msgpack", kind
            assert isinstance(msg.body, memoryview) and msg.inferred, kind  # data
        # only the sections §3.8 allows, and a header that carries nothing but ttl
        found = amqp_strict.sections(data)
        descriptors = [d for d, _, _ in found]
        body = [] if kind == "heartbeat" else [0x77 if serializer == "json" else 0x75]
        assert descriptors == [0x70, 0x73] + body, kind
        header = found[0][2]
        if kind in ("call", "heartbeat"):
            assert header == [None, None, 30000], kind   # durable, priority, ttl
        else:
            assert header == [], kind   # Proton always writes an (empty) header


def test_non_durable_header(codec):
    """non_durable (RabbitMQ 4): the header's durable field is an explicit false (42),
    RabbitMQ 4.0 taking a null or absent one as durable; the rest of the message is
    the same, and every reader takes it as the default header it is."""
    plain = _all_kinds(codec, "json")
    marked = _all_kinds(codec, "json", non_durable=True)
    for kind, data in marked.items():
        found = amqp_strict.sections(data)
        assert [d for d, _, _ in found][:2] == [0x70, 0x73], kind
        if kind in ("call", "heartbeat"):
            assert found[0][2] == [False, None, 30000], kind
            assert data[:7] == bytes.fromhex("005370c0080342"), kind
            assert len(data) == len(plain[kind]), kind
        else:
            assert found[0][2] == [False], kind
            assert data[:7] == bytes.fromhex("005370c0020142"), kind
            assert data[7:] == plain[kind][4:], kind
        assert proton_decode(data).durable is False, kind
        ours, theirs = codec.decode(data), codec.decode(plain[kind])
        if kind != "call":   # a call's expiry follows the clock
            assert ours == theirs, kind


# ---------------------------------------------------------------------------------------
# bad input: CodecError naming the cause, from both engines


def proton_message_bytes(body=None, *, inferred=False, content_type=None,
                         correlation_id=None, address="a", message_id=None):
    msg = proton.Message(inferred=inferred)
    msg.address = address
    if body is not None:
        msg.body = body
    if content_type is not None:
        msg.content_type = content_type
    if correlation_id is not None:
        msg.correlation_id = correlation_id
    if message_id is not None:
        msg.id = message_id
    return bytes(msg.encode())


def raw_message(*sections):
    """Concatenate hand-encoded sections (bytes) and proton.Data-encoded ones."""
    out = b""
    for section in sections:
        if isinstance(section, bytes):
            out += section
        else:
            code, value = section
            data = proton.Data()
            data.put_object(proton.Described(proton.ulong(code), value))
            out += bytes(data.encode())
    return out


def amqp_str(raw):
    return b"\xa1" + bytes([len(raw)]) + raw


def amqp_list8(*encoded_items):
    content = bytes([len(encoded_items)]) + b"".join(encoded_items)
    return b"\xc0" + bytes([len(content)]) + content


GOOD_REQUEST = json.dumps({"request": {"method": "m"}, "context": {}})

BAD_MESSAGES = {
    # name: (bytes, key phrase of the error)
    "amqp-value int": (proton_message_bytes(42), "wrong body"),
    "amqp-value list": (proton_message_bytes([1, 2]), "wrong body"),
    "amqp-value map": (proton_message_bytes({"request": {}, "context": {}}), "wrong body"),
    "amqp-value bool": (proton_message_bytes(True), "wrong body"),
    "amqp-value uuid": (proton_message_bytes(uuid.uuid4()), "wrong body"),
    "amqp-sequence": (proton_message_bytes([1, 2], inferred=True), "amqp-sequence"),
    "binary unknown content-type": (
        proton_message_bytes(b"{}", inferred=True, content_type="text/plain"),
        "unsupported content-type"),
    "msgpack content-type on string": (
        proton_message_bytes(GOOD_REQUEST, content_type="application/msgpack"),
        "msgpack content-type on a string"),
    "non-UTF-8 data body": (proton_message_bytes(b"\xff\xfe", inferred=True), "UTF-8"),
    "non-UTF-8 amqp-value string": (
        raw_message((0x73, [None, None, "a"]), b"\x00Sw" + amqp_str(b'{"\xff\xfe": 1}')),
        "utf-8"),
    "non-JSON body": (proton_message_bytes("not json {"), "not valid JSON"),
    "non-JSON data body": (proton_message_bytes(b"{nope", inferred=True),
                           "not valid JSON"),
    "JSON list": (proton_message_bytes("[1, 2]"), "expected a map"),
    "JSON string": (proton_message_bytes('"request"'), "expected a map"),
    "JSON null": (proton_message_bytes("null"), "expected a map"),
    "JSON nested too deeply": (proton_message_bytes("[" * 100000 + "]" * 100000),
                               "nest"),  # "nested too deeply" / "nesting deeper"
    "missing context": (proton_message_bytes('{"request": {}}'), "no 'context'"),
    "context not a map": (proton_message_bytes('{"request": {}, "context": [1]}'),
                          "'context' is a"),
    "request not a map": (proton_message_bytes('{"request": 5, "context": {}}'),
                          "'request' is a"),
    "call_monitor_timeout a string": (
        proton_message_bytes('{"request": {}, "context": {}, "call_monitor_timeout": "5"}'),
        "'call_monitor_timeout' is a"),
    "call_monitor_timeout a bool": (
        proton_message_bytes('{"request": {}, "context": {}, "call_monitor_timeout": true}'),
        "'call_monitor_timeout' is a"),
    "neither request nor reply": (proton_message_bytes('{"context": {}}'),
                                  "neither 'request'"),
    "reply without correlation-id": (proton_message_bytes('{"response": 1}'),
                                     "reply has no correlation-id"),
    "failure not a string": (proton_message_bytes('{"failure": 42}', correlation_id="c"),
                             "'failure' is a int"),
    "failure a map": (proton_message_bytes('{"failure": {"class": "E"}}',
                                           correlation_id="c"), "'failure' is a dict"),
    "no body, no correlation-id": (proton_message_bytes(), "no body and no correlation-id"),
    "envelope 3.0": (proton_message_bytes(json.dumps(
        {"request": {"oslo.version": "3.0", "oslo.message": "{}"}, "context": {}})),
        "unsupported message envelope version '3.0'"),
    "envelope 2.1": (proton_message_bytes(json.dumps(
        {"request": {"oslo.version": "2.1", "oslo.message": "{}"}, "context": {}})),
        "unsupported message envelope version"),
    "envelope version garbage": (proton_message_bytes(json.dumps(
        {"request": {"oslo.version": "two", "oslo.message": "{}"}, "context": {}})),
        "invalid version"),
    "envelope message not a string": (proton_message_bytes(json.dumps(
        {"request": {"oslo.version": "2.0", "oslo.message": {}}, "context": {}})),
        "not a JSON string"),
    "envelope message not JSON": (proton_message_bytes(json.dumps(
        {"request": {"oslo.version": "2.0", "oslo.message": "{x"}, "context": {}})),
        "not valid JSON"),
    "envelope message not an object": (proton_message_bytes(json.dumps(
        {"request": {"oslo.version": "2.0", "oslo.message": "[1]"}, "context": {}})),
        "'request' is a list"),
    "invalid msgpack": (proton_message_bytes(b"\xc1", inferred=True,
                                             content_type="application/msgpack"),
                        "not valid msgpack"),
    "msgpack not a map": (proton_message_bytes(b"\x93\x01\x02\x03", inferred=True,
                                               content_type="application/msgpack"),
                          "expected a map"),
    "msgpack trailing data": (proton_message_bytes(b"\x80\x80", inferred=True,
                                                   content_type="application/msgpack"),
                              "not valid msgpack"),
    "non-UTF-8 address": (raw_message(b"\x00Ss" + amqp_list8(b"\x40", b"\x40",
                                                             amqp_str(b"a\xff\xfe")),
                                      (0x77, GOOD_REQUEST)), "utf-8"),
    "non-UTF-8 message-id": (raw_message(b"\x00Ss" + amqp_list8(amqp_str(b"\xc3")),
                                         (0x77, GOOD_REQUEST)), "utf-8"),
}


@pytest.mark.parametrize("name", sorted(BAD_MESSAGES))
def test_bad_message(codec, name):
    data, phrase = BAD_MESSAGES[name]
    expect_error(codec, data, phrase)


def test_empty_input(codec):
    expect_error(codec, b"", "empty input")
    expect_error(codec, bytearray(), "empty input")


@pytest.mark.parametrize("value", ["a string", None, 42, [0x00, 0x53], object()],
                         ids=["str", "None", "int", "list", "object"])
def test_non_bytes_input(codec, value):
    expect_error(codec, value, "expected bytes")


def test_oversized_input(codec):
    data = codec.encode_request("a", {"method": "m", "args": {"x": "y" * 1000}}, {})
    expect_error(codec, data, "exceeds the limit", max_size=len(data) - 1)
    assert codec.decode(data, max_size=len(data)).kind == REQUEST


VALID_SAMPLES = {
    "call": lambda c: c.encode_request("openstack.org/om/rpc/anycast/x/y",
                                       {"method": "m", "args": {"a": [1, "ü"]}},
                                       dict(TRACE), message_id=uuid.uuid4().hex,
                                       reply_to="reply/1", timeout=30,
                                       call_monitor_timeout=10, now=1.7e9),
    "cast-msgpack": lambda c: c.encode_request("a", {"method": "m"}, {"u": 1},
                                               serializer="msgpack"),
    "reply": lambda c: c.encode_reply("r", "cid", response={"x": [1, 2]}),
    "reply-msgpack": lambda c: c.encode_reply("r", 7, response=[1], serializer="msgpack"),
    "heartbeat": lambda c: c.encode_heartbeat("r", "cid", 10),
    "notification": lambda c: c.encode_notification("n", {"event_type": "e"}, {}),
}


# Not AMQP at all. Proton's pn_message_decode reports no error for these (it skips what
# it cannot parse), so they come out as "a message with no body": refused, but for the
# wrong stated reason.
GARBAGE = {
    "ff": b"\xff" * 16,
    "text": b"hello, world",
    "zeros": b"\x00" * 8,
    "lone-descriptor": b"\x00Sp",
    "random": bytes.fromhex("35a414d025c24b40ae3ac127722988ba97"),
}


@pytest.mark.parametrize("name", sorted(GARBAGE))
def test_garbage_raises(codec, name):
    with pytest.raises(CodecError):
        codec.decode(GARBAGE[name])


@pytest.mark.parametrize("name", sorted(GARBAGE))
def test_garbage_error_names_the_cause(codec, name):
    expect_error(codec, GARBAGE[name], "not an AMQP message")


@pytest.mark.parametrize("sample", sorted(VALID_SAMPLES))
def test_truncated_messages_raise(codec, sample):
    """Every prefix of a valid message is refused with a CodecError -- except a prefix
    that ends exactly between two sections, which is itself a well-formed message (a
    reply cut before its body is a well-formed heartbeat; nothing can tell them apart).
    """
    data = VALID_SAMPLES[sample](codec)
    bounds = set(amqp_strict.section_bounds(data))
    accepted = []
    for size in range(1, len(data)):
        prefix = data[:size]
        try:
            msg = codec.decode(prefix)
        except CodecError:
            continue
        if size not in bounds:
            accepted.append((size, msg.kind))
    assert not accepted, f"truncated prefixes decoded: {accepted}"


@pytest.mark.parametrize("sample", sorted(VALID_SAMPLES))
def test_truncated_messages_error_names_the_cause(codec, sample):
    data = VALID_SAMPLES[sample](codec)
    bounds = set(amqp_strict.section_bounds(data))
    for size in range(1, len(data)):
        if size in bounds:
            continue
        with pytest.raises(CodecError) as info:
            codec.decode(data[:size])
        message = str(info.value).lower()
        assert "truncated" in message or "not an amqp message" in message, (size, message)


def test_trailing_garbage_is_refused(codec):
    data = codec.encode_reply("r", "cid", response=1)
    expect_error(codec, data + b"\xa6\xcd", "not an AMQP message")


# ---------------------------------------------------------------------------------------
# bad arguments to the encoders


@pytest.mark.parametrize("bad_id, phrase", [
    (1.5, "must be str, bytes, int or UUID"),
    (True, "must be str, bytes, int or UUID"),
    (None, "must be str, bytes, int or UUID"),
    (["x"], "must be str, bytes, int or UUID"),
    ("a\0b", "NUL"),
    (-1, "does not fit an AMQP ulong"),
    (2 ** 64, "does not fit an AMQP ulong"),
], ids=["float", "bool", "None", "list", "NUL", "negative", "too-big"])
def test_bad_ids(codec, bad_id, phrase):
    if bad_id is not None:
        with pytest.raises(CodecError, match=phrase):
            codec.encode_request("a", {}, {}, message_id=bad_id)
    with pytest.raises(CodecError, match=phrase):
        codec.encode_reply("a", bad_id, response=1)
    with pytest.raises(CodecError, match=phrase):
        codec.encode_heartbeat("a", bad_id, 5)


@pytest.mark.parametrize("bad, phrase", [(None, "must be a str"), (b"a", "must be a str"),
                                         (5, "must be a str"), ("a\0b", "NUL")])
def test_bad_addresses(codec, bad, phrase):
    with pytest.raises(CodecError, match=phrase):
        codec.encode_request(bad, {}, {})
    if bad is not None:   # reply_to=None means "no reply-to"
        with pytest.raises(CodecError, match=phrase):
            codec.encode_request("a", {}, {}, reply_to=bad, message_id="x")
    with pytest.raises(CodecError, match=phrase):
        codec.encode_reply(bad, "c", response=1)
    with pytest.raises(CodecError, match=phrase):
        codec.encode_heartbeat(bad, "c", 5)
    with pytest.raises(CodecError, match=phrase):
        codec.encode_notification(bad, {}, {})


@pytest.mark.parametrize("serializer", ["yaml", "JSON", "", None, "pickle"])
def test_unknown_serializer(codec, serializer):
    with pytest.raises(CodecError, match="unknown serializer"):
        codec.encode_request("a", {}, {}, serializer=serializer)
    with pytest.raises(CodecError, match="unknown serializer"):
        codec.encode_reply("a", "c", response=1, serializer=serializer)
    with pytest.raises(CodecError, match="unknown serializer"):
        codec.encode_notification("a", {}, {}, serializer=serializer)


def test_failure_must_be_a_string(codec):
    with pytest.raises(CodecError, match="failure must be the serialized exception"):
        codec.encode_reply("a", "c", failure=ValueError("x"))


@pytest.mark.parametrize("serializer", ["json", "msgpack"])
def test_unserializable_body(codec, serializer):
    with pytest.raises(CodecError, match="cannot serialize"):
        codec.encode_request("a", {"x": object()}, {}, serializer=serializer)
    with pytest.raises(CodecError, match="cannot serialize"):
        codec.encode_reply("a", "c", response=object(), serializer=serializer)


def test_msgpack_int_out_of_range(codec):
    with pytest.raises(CodecError, match="cannot serialize"):
        codec.encode_request("a", {"x": 2 ** 64}, {}, serializer="msgpack")


@pytest.mark.parametrize("timeout", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_timeout(codec, timeout):
    with pytest.raises(CodecError, match="finite number of seconds"):
        codec.encode_request("a", {}, {}, message_id="x", reply_to="r", timeout=timeout)
    with pytest.raises(CodecError, match="finite number of seconds"):
        codec.encode_request("a", {}, {}, message_id="x", reply_to="r",
                             call_monitor_timeout=timeout)


@pytest.mark.parametrize("ttl", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_heartbeat_ttl(codec, ttl):
    with pytest.raises(CodecError, match="finite number of seconds"):
        codec.encode_heartbeat("a", "c", ttl)


# ---------------------------------------------------------------------------------------
# cases where the engines once differed


def test_symbol_body(codec):
    """An amqp-value holding a *symbol* of JSON text is refused by both: oslo bodies are
    AMQP strings (python-qpid-proton returns proton.symbol, a str subclass, which the
    pure codec must not mistake for one)."""
    data = proton_message_bytes(proton.symbol(GOOD_REQUEST))
    expect_error(codec, data, "wrong body")


def test_binary_ids_round_trip(codec):
    # was a bug in the pure codec (python-qpid-proton returns binary ids as memoryview)
    for value in (b"", b"\x00\x01\xff", uuid.uuid4().bytes):
        assert codec.decode(codec.encode_request("a", {}, {}, message_id=value)
                            ).message_id == value
        assert codec.decode(codec.encode_heartbeat("a", value, 1)).correlation_id == value


def test_non_string_application_property_key(codec):
    """Application-properties keys must be strings (AMQP 1.0 §3.2.5). Both codecs
    check it while walking the sections, so both refuse the same way (python-qpid-proton
    would otherwise fail on its own while building a dict of the binary key)."""
    props = b"\x00St\xc1\x07\x02\xa0\x01k\xa1\x01v"     # map8 {binary b'k': 'v'}
    data = raw_message((0x73, [None, None, "a"]), props, (0x77, GOOD_REQUEST))
    expect_error(codec, data, "has a binary key")


def test_codec_check_passes():
    """`fastamqp selfcheck`: every kind read by every engine and by the original's way."""
    from fastamqp.tools import codec_check
    lines = []
    assert codec_check.main(argv_number=10, out=lines.append) == 0, "\n".join(lines)
    assert lines[-1] == "codec-check: all checks passed"
    assert lines[1].startswith("JSON bodies: dumps: ")


def test_pure_fast_path_encodes_the_reference_bytes():
    """The pure codec's fast path (cffi, as _core) writes exactly the bytes of its
    proton.Message path, for every kind of message and field type."""
    import uuid as _uuid
    from fastamqp.engine import py_codec as p
    if not p.FAST:
        pytest.skip("python-qpid-proton has no cffi binding (< 0.39): one path only")
    request = {"method": "m", "args": {"a": [1, 2.5, None, "ü", True]}, "version": "5.0"}
    for kwargs in ({}, dict(message_id="id", reply_to="r/1", timeout=30, now=1.7e9),
                   dict(message_id=_uuid.UUID(int=7), timeout=0.5, now=2.0,
                        call_monitor_timeout=5),
                   dict(message_id=2 ** 64 - 1), dict(message_id=b"\x00b"),
                   dict(serializer="msgpack"), dict(non_durable=True),
                   dict(non_durable=True, timeout=3, now=1.0)):
        assert (p.encode_request("a/ü", request, {"u": 1}, **kwargs)
                == p._message_encode_request("a/ü", request, {"u": 1}, **kwargs)), kwargs
    for kwargs in ({}, dict(version=1.0), dict(serializer="msgpack"),
                   dict(non_durable=True)):
        assert (p.encode_notification("n", {"event_type": "x"}, {}, **kwargs)
                == p._message_encode_notification("n", {"event_type": "x"}, {},
                                                  **kwargs)), kwargs
    for cid in ("cid", 42, b"\x01", _uuid.UUID(int=9)):
        for kwargs in (dict(response={"x": "z" * 300}), dict(failure="{}"),
                       dict(response=[1], serializer="msgpack"), dict(non_durable=True)):
            assert (p.encode_reply("r", cid, **kwargs)
                    == p._message_encode_reply("r", cid, **kwargs)), (cid, kwargs)
        for ttl in (None, 0, 10, 4294967.295):
            assert (p.encode_heartbeat("r", cid, ttl)
                    == p._message_encode_heartbeat("r", cid, ttl))
    big = {"data": "x" * 100000}
    assert (p.encode_request("a", big, {}) == p._message_encode_request("a", big, {}))
    for bad in (dict(message_id=1.5), dict(reply_to=3), dict(timeout=float("nan")),
                dict(serializer="xml")):
        with pytest.raises(CodecError):
            p.encode_request("a", {}, {}, **bad)
        with pytest.raises(CodecError):
            p._message_encode_request("a", {}, {}, **bad)


def test_pure_reply_peek(codec):
    """What the pure engine's I/O thread reads of a message on the reply link: its
    correlation-id, and whether it is a heartbeat."""
    from fastamqp.engine import py_codec as p
    import uuid as _uuid
    for cid in ("cid", 42, b"\x01", _uuid.UUID(int=9)):
        assert p.peek_reply(codec.encode_reply("r", cid, response=1)) == (cid, False)
        assert p.peek_reply(codec.encode_heartbeat("r", cid, 5)) == (cid, True)
    empty = proton.Message(inferred=True, correlation_id="c", body=b"")
    assert p.peek_reply(bytes(empty.encode())) == ("c", True)
    # A string correlation-id that is not UTF-8: nobody can claim the reply.
    with pytest.raises(CodecError):
        p.peek_reply(b"\x00\x53\x73\xc0\x0a\x06\x40\x40\x40\x40\x40\xa1\x02\xff\xfe")
