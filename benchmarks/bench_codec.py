"""Codec micro benchmarks: encode+decode of 1 KiB messages, C vs pure Python vs the
original driver's path (proton.Message + json), side by side in one run.

    .venv/bin/pytest benchmarks/bench_codec.py --benchmark-group-by=func

Target (issue 2): the C codec at least 10x faster than the original path for a 1 KiB
request. Compare the rows of one run, never numbers from different runs.
"""
import json

import proton

from fastamqp.selfcheck import (NOTIFY_ADDRESS, REPLY_ADDRESS, RPC_ADDRESS,
                                original_decode, original_encode_request,
                                sample_context, sample_request)

REQ = sample_request(1024)
CTX = sample_context()
RESPONSE = {"result": "y" * 900}
NOTIFICATION = {"message_id": "c1d2", "publisher_id": "compute.host1",
                "event_type": "compute.instance.create.end", "priority": "INFO",
                "payload": {"data": "z" * 700}, "timestamp": "2026-11-23 21:00:00.000000"}


def _original_reply():
    msg = proton.Message(inferred=True)
    msg.body = json.dumps({"response": RESPONSE})
    msg.correlation_id = "9f2c"
    msg.address = REPLY_ADDRESS
    return original_decode(msg.encode())


def _original_notification():
    msg = proton.Message(inferred=True)
    inner = {"oslo.version": "2.0", "oslo.message": json.dumps(NOTIFICATION)}
    msg.body = json.dumps({"request": inner, "context": CTX})
    msg.address = NOTIFY_ADDRESS
    body = original_decode(msg.encode())[0]
    return json.loads(body["request"]["oslo.message"])


def test_request_original(benchmark):
    benchmark(lambda: original_decode(original_encode_request(
        RPC_ADDRESS, REQ, CTX, message_id="9f2c", reply_to=REPLY_ADDRESS, timeout=30)))


def test_request(benchmark, codec):
    def run():
        return codec.decode(codec.encode_request(
            RPC_ADDRESS, REQ, CTX, message_id="9f2c", reply_to=REPLY_ADDRESS, timeout=30))
    assert benchmark(run).request == REQ


def test_reply_original(benchmark):
    benchmark(_original_reply)


def test_reply(benchmark, codec):
    def run():
        return codec.decode(codec.encode_reply(REPLY_ADDRESS, "9f2c", response=RESPONSE))
    assert benchmark(run).response == RESPONSE


def test_notification_original(benchmark):
    assert benchmark(_original_notification) == NOTIFICATION


def test_notification(benchmark, codec):
    def run():
        return codec.decode(codec.encode_notification(NOTIFY_ADDRESS, NOTIFICATION, CTX,
                                                      2.0))
    assert benchmark(run).request == NOTIFICATION


def test_request_msgpack(benchmark, codec):
    def run():
        return codec.decode(codec.encode_request(
            RPC_ADDRESS, REQ, CTX, message_id="9f2c", reply_to=REPLY_ADDRESS, timeout=30,
            serializer="msgpack"))
    assert benchmark(run).request == REQ
