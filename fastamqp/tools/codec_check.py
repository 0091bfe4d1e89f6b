"""``fastamqp codec-check``: every message kind through both codecs, checked against the
original driver's encoding, and the codecs' speed side by side.

"The original way" below is what oslo.messaging 14.9.3's impl_amqp1 did per message
(REFERENCE §3.8): ``proton.Message(inferred=True)`` with a JSON string body, and
``json.loads(message.body)`` on receipt. It is the yardstick for compatibility and speed.
Compatibility is by value: the JSON text need not be the stdlib's byte for byte, but
every engine and the original must read every engine's message the same way.
"""
import json
import time
import timeit

import proton

from fastamqp import engine, serializers
from fastamqp.message import ENVELOPE_MESSAGE_KEY, HEARTBEAT, REPLY, REQUEST

RPC_ADDRESS = "openstack.org/om/rpc/anycast/openstack/compute"
REPLY_ADDRESS = "amqp:/_topo/0/router/temp.Xy12"
NOTIFY_ADDRESS = "openstack.org/om/notify/anycast/openstack/notifications.info"


def sample_request(size=1024):
    """An RPC request whose encoded message is about ``size`` bytes."""
    return {"method": "echo", "args": {"data": "x" * max(size - 400, 0)},
            "version": "1.0"}


def sample_context():
    return {"user_id": "u1", "project_id": "p" * 10,
            "request_id": "req-8e6bfd2e-4b1c-4e47-9d8c-0bb3b6ec1ea5",
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}


def original_encode_request(address, request, context, message_id=None, reply_to=None,
                            timeout=None):
    msg = proton.Message(inferred=True)
    msg.body = json.dumps({"request": request, "context": context})
    msg.address = address
    if message_id is not None:
        msg.id = message_id
        msg.reply_to = reply_to
    if timeout:
        msg.ttl = timeout
        msg.expiry_time = time.time() + timeout
    return msg.encode()


def original_decode(data):
    msg = proton.Message()
    msg.decode(data)
    body = json.loads(msg.body) if msg.body is not None else None
    return body, msg.id, msg.reply_to, msg.correlation_id, msg.address


def _original_value(body):
    """The body as oslo's deserialize_msg leaves it: a 2.0 envelope's inner JSON string
    parsed too, since only its value (not its spacing) reaches the application."""
    request = body.get("request") if isinstance(body, dict) else None
    if isinstance(request, dict) and ENVELOPE_MESSAGE_KEY in request:
        request = dict(request, **{ENVELOPE_MESSAGE_KEY: json.loads(
            request[ENVELOPE_MESSAGE_KEY])})
        body = dict(body, request=request)
    return body


def _check_kinds(out):
    c, py = engine.c_codec, engine.py_codec
    codecs = [x for x in (c, py) if x is not None]
    req, ctx = sample_request(), sample_context()
    now = 1_700_000_000.0
    notification = {"event_type": "compute.instance.create"}
    failure = json.dumps({"class": "ValueError"})
    # (name, kind, encoder, what the original driver's receive path must read back:
    # json.loads(message.body), or None for the body-less heartbeat)
    cases = [
        ("rpc call", REQUEST, lambda k: k.encode_request(
            RPC_ADDRESS, req, ctx, message_id="9f2c", reply_to=REPLY_ADDRESS,
            timeout=30, call_monitor_timeout=10, now=now),
         {"request": req, "context": ctx, "call_monitor_timeout": 10}),
        ("rpc cast", REQUEST, lambda k: k.encode_request(RPC_ADDRESS, req, ctx),
         {"request": req, "context": ctx}),
        ("rpc reply", REPLY, lambda k: k.encode_reply(REPLY_ADDRESS, "9f2c",
                                                       response={"ok": 1}),
         {"response": {"ok": 1}}),
        ("rpc failure", REPLY, lambda k: k.encode_reply(REPLY_ADDRESS, "9f2c",
                                                         failure=failure),
         {"failure": failure}),
        ("heartbeat", HEARTBEAT, lambda k: k.encode_heartbeat(REPLY_ADDRESS, "9f2c", 10),
         None),
        ("notification 2.0", REQUEST, lambda k: k.encode_notification(
            NOTIFY_ADDRESS, notification, ctx, 2.0),
         {"request": {"oslo.version": "2.0", "oslo.message": notification},
          "context": ctx}),
        ("msgpack call", REQUEST, lambda k: k.encode_request(
            RPC_ADDRESS, req, ctx, message_id="9f2c", reply_to=REPLY_ADDRESS,
            serializer="msgpack"), "msgpack"),
    ]
    failures = 0
    for name, kind, make, original_reads in cases:
        encoded = [make(k) for k in codecs]
        # Every engine reads every engine's message, all to one result of the right kind.
        decoded = [k.decode(e) for k in codecs for e in encoded]
        same_result = all(d == decoded[0] for d in decoded) and decoded[0].kind == kind
        if original_reads == "msgpack":  # new format: the original driver never read it
            original_ok, verdict = True, "n/a (msgpack)"
        else:
            original_ok = True
            for data in encoded:
                body, _, _, corr, addr = original_decode(data)
                original_ok &= _original_value(body) == original_reads and (
                    addr is not None and (kind == REQUEST or corr == "9f2c"))
            verdict = _yes(original_ok)
        ok = same_result and original_ok
        failures += not ok
        out(f"  {name:18} {len(encoded[0]):5d} bytes  "
            f"C and Python read each other's: {_yes(same_result)}  "
            f"original reads them: {verdict}")
    # And the other way: what the original driver sent, we decode.
    orig = original_encode_request(RPC_ADDRESS, req, ctx, message_id="9f2c",
                                   reply_to=REPLY_ADDRESS, timeout=30)
    back = [k.decode(orig) for k in codecs]
    ok = all(b.request == req and b.context == ctx and b.message_id == "9f2c" for b in back)
    failures += not ok
    out(f"  {'original -> us':18} {len(orig):5d} bytes  decoded by every engine: {_yes(ok)}")
    return failures


def _yes(flag):
    return "yes" if flag else "NO"


def _speed(out, number):
    req, ctx = sample_request(), sample_context()

    def original():
        data = original_encode_request(RPC_ADDRESS, req, ctx, message_id="9f2c",
                                       reply_to=REPLY_ADDRESS, timeout=30)
        return original_decode(data)

    def ours(codec):
        def run():
            data = codec.encode_request(RPC_ADDRESS, req, ctx, message_id="9f2c",
                                        reply_to=REPLY_ADDRESS, timeout=30)
            return codec.decode(data)
        return run

    paths = [("original (proton.Message + json)", original)]
    paths.append(("fastamqp pure Python", ours(engine.py_codec)))
    if engine.c_codec is not None:
        paths.append(("fastamqp C", ours(engine.c_codec)))
    results = {}
    for name, fn in paths:
        best = min(timeit.repeat(fn, number=number, repeat=3)) / number
        results[name] = best
    base = results[paths[0][0]]
    out(f"  encode+decode of a 1 KiB RPC call, best of 3 x {number}:")
    for name, seconds in results.items():
        out(f"    {name:34} {seconds * 1e6:8.2f} us/message   "
            f"{base / seconds:5.1f}x the original")


def main(argv_number=2000, out=print):
    out(f"fastamqp codec-check: engine {engine.engine_name()!r}"
        + ("" if engine.c_codec is not None else
           f" (C extension unavailable: {engine.c_import_error or 'FASTAMQP_PUREPYTHON=1'})"))
    out(f"JSON bodies: {serializers.json_libraries()}")
    out("message kinds (C and pure-Python codec, against the original driver's encoding):")
    failures = _check_kinds(out)
    _speed(out, argv_number)
    out("codec-check: " + ("all checks passed" if not failures else f"{failures} FAILED"))
    return 1 if failures else 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
