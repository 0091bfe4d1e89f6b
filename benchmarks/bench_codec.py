"""Codec micro benchmarks: encode+decode of 1 KiB messages, C vs pure Python vs the
original driver's path (proton.Message + json), side by side in one run.

    .venv/bin/pytest benchmarks/bench_codec.py --benchmark-group-by=func \\
        --benchmark-columns=min,median,rounds

Each benchmark is parametrized over ``c``, ``python``, ``python-stdlib-json`` (the pure
codec with fastamqp.serializers' stdlib fallback forced, as where orjson and msgspec
are not installed) and ``original``; read the ratio column of one group (and compare
minima: the machines are shared and noisy). Target (issue 2): the C codec at least 10x
faster than the original path for a 1 KiB request.
"""
import json
import types

import proton
import pytest

from fastamqp import engine, serializers
from fastamqp.tools.codec_check import (NOTIFY_ADDRESS, REPLY_ADDRESS, RPC_ADDRESS,
                                original_decode, original_encode_request,
                                sample_context, sample_request)

REQ = sample_request(1024)
CTX = sample_context()
RESPONSE = {"result": "y" * 900}
NOTIFICATION = {"message_id": "c1d2", "publisher_id": "compute.host1",
                "event_type": "compute.instance.create.end", "priority": "INFO",
                "payload": {"data": "z" * 700}, "timestamp": "2026-11-23 21:00:00.000000"}


class OriginalPath:
    """What oslo.messaging 14.9.3's impl_amqp1 did per message (REFERENCE §3.8)."""

    @staticmethod
    def encode_request(address, request, context, message_id=None, reply_to=None,
                       timeout=None, serializer="json"):
        assert serializer == "json"
        return original_encode_request(address, request, context, message_id,
                                       reply_to, timeout)

    @staticmethod
    def encode_reply(address, correlation_id, response=None):
        msg = proton.Message(inferred=True)
        msg.body = json.dumps({"response": response})
        msg.correlation_id = correlation_id
        msg.address = address
        return msg.encode()

    @staticmethod
    def encode_notification(address, message, context, version):
        msg = proton.Message(inferred=True)
        inner = {"oslo.version": "2.0", "oslo.message": json.dumps(message)}
        msg.body = json.dumps({"request": inner, "context": context})
        msg.address = address
        return msg.encode()

    @staticmethod
    def decode(data):
        body, msg_id, reply_to, correlation_id, address = original_decode(data)
        request = body.get("request")
        if isinstance(request, dict) and "oslo.message" in request:  # deserialize_msg
            request = json.loads(request["oslo.message"])
        return types.SimpleNamespace(request=request, response=body.get("response"),
                                     context=body.get("context"), message_id=msg_id,
                                     reply_to=reply_to, correlation_id=correlation_id)


STDLIB_JSON = "stdlib-json"
PATHS = [pytest.param(engine.py_codec, id="python"),
         pytest.param((engine.py_codec, STDLIB_JSON), id="python-stdlib-json"),
         pytest.param(OriginalPath, id="original")]
if engine.c_codec is not None:
    PATHS.insert(0, pytest.param(engine.c_codec, id="c"))


@pytest.fixture(params=PATHS)
def path(request, monkeypatch):
    if isinstance(request.param, tuple):
        # The pure codec looks these up on every call (the C codec once, at import).
        monkeypatch.setattr(serializers, "ORJSON_DUMPS", None)
        monkeypatch.setattr(serializers, "MSGSPEC_LOADS", None)
        return request.param[0]
    return request.param


def test_request(benchmark, path):
    def run():
        return path.decode(path.encode_request(
            RPC_ADDRESS, REQ, CTX, message_id="9f2c", reply_to=REPLY_ADDRESS, timeout=30))
    assert benchmark(run).request == REQ


def test_reply(benchmark, path):
    def run():
        return path.decode(path.encode_reply(REPLY_ADDRESS, "9f2c", response=RESPONSE))
    assert benchmark(run).response == RESPONSE


def test_notification(benchmark, path):
    def run():
        return path.decode(path.encode_notification(NOTIFY_ADDRESS, NOTIFICATION, CTX,
                                                    2.0))
    assert benchmark(run).request == NOTIFICATION


def test_request_msgpack(benchmark, codec):
    """The opt-in msgpack body (no original counterpart)."""
    def run():
        return codec.decode(codec.encode_request(
            RPC_ADDRESS, REQ, CTX, message_id="9f2c", reply_to=REPLY_ADDRESS, timeout=30,
            serializer="msgpack"))
    assert benchmark(run).request == REQ
