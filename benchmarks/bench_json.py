"""JSON micro benchmarks on 1 KiB oslo.messaging bodies: the stdlib json module, orjson,
msgspec, and what fastamqp's engines run (orjson writes, msgspec reads, the stdlib takes
what they do not take its way): ``fastamqp-c`` is the C engine's path
(``fastamqp._core.json_dumps``/``json_loads``), ``fastamqp-python`` the pure engine's
(``fastamqp.serializers.dumps_json``/``loads_json``).

    .venv/bin/pytest benchmarks/bench_json.py --benchmark-group-by=param:body,func \
        --benchmark-columns=min,median,rounds

Each group holds one body and one direction, every implementation side by side; compare
rows of one run only. "dumps" is UTF-8 bytes out (what the wire needs: the stdlib's is
json.dumps(obj).encode()), "loads" is the value from those bytes. fastamqp's rows cost
more than the bare library's: the check for what orjson writes otherwise (NaN and the
infinities, as null: a walk of a body whose text has a "null", in C for the C engine)
and, for the C engine's loads, the copy out of Proton's buffer.
"""
import json
import uuid

import pytest

from fastamqp import engine, serializers

orjson = pytest.importorskip("orjson")
msgspec = pytest.importorskip("msgspec")

RPC_REQUEST = {
    "request": {"method": "echo", "args": {"data": "x" * 900}, "version": "1.0"},
    "context": {"user": "u", "project_id": "pppppppppp",
                "request_id": "req-" + str(uuid.UUID(int=0x1234567890abcdef))},
}

# About 1 KiB of JSON with what real payloads carry: nested dicts and lists, ints,
# floats, booleans, nulls, escapes and non-ASCII text.
MIXED = {
    "request": {
        "method": "build_and_run_instance",
        "namespace": "compute",
        "version": "5.23",
        "args": {
            "instance": {"uuid": "6f0c7b0e-2b7c-4a53-9f5e-3c1d2e4f5a6b", "vcpus": 4,
                         "memory_mb": 8192, "root_gb": 40, "ephemeral_gb": 0,
                         "display_name": "w\u00fcrzburg-\u6771\u4eac-01",
                         "metadata": {"tier": "gold", "owner": "\u00c5sa \u00d8stby"},
                         "locked": False, "task_state": None, "progress": 37.5},
            "limits": {"memory_mb": 16384.0, "disk_gb": 400, "numa_topology": None},
            "request_spec": {"num_instances": 1, "ignore_hosts": ["h1", "h2"],
                             "scheduler_hints": {"group": ["g\u00e9"], "retry": 3},
                             "weights": [1.0, 0.25, -3.5e-07, 123456789012345]},
            "block_device_mapping": [
                {"boot_index": 0, "device_name": "/dev/vda", "volume_size": 40,
                 "delete_on_termination": True, "tag": "root\tdisk \"a\""},
                {"boot_index": -1, "device_name": "/dev/vdb", "volume_size": 100,
                 "delete_on_termination": False, "tag": "\u2603 data"},
            ],
            "node": "compute-17.example.org", "emoji": "\U0001f680",
        },
    },
    "context": {"user": "u", "project_id": "pppppppppp", "is_admin": False,
                "roles": ["member", "reader"], "request_id": "req-" + str(uuid.UUID(
                    int=0xfedcba0987654321)), "timestamp": "2026-11-23T21:00:00.000000"},
}

BODIES = {"rpc_request": RPC_REQUEST, "mixed": MIXED}

_msgspec_encode = msgspec.json.Encoder().encode
DUMPS = {
    "stdlib": lambda obj: json.dumps(obj).encode(),
    "orjson": orjson.dumps,
    "msgspec": _msgspec_encode,
    "fastamqp-python": serializers.dumps_json,
}
LOADS = {
    "stdlib": lambda data: json.loads(data.decode("utf-8")),
    "orjson": orjson.loads,
    "msgspec": msgspec.json.Decoder().decode,
    "fastamqp-python": serializers.loads_json,
}
if engine.c_codec is not None:
    DUMPS["fastamqp-c"] = engine.c_codec.json_dumps
    LOADS["fastamqp-c"] = engine.c_codec.json_loads


@pytest.fixture(params=sorted(BODIES), ids=sorted(BODIES))
def body(request):
    return BODIES[request.param]


@pytest.fixture(params=list(DUMPS))
def impl(request):
    return request.param


def test_sizes():
    for name, obj in BODIES.items():
        size = len(json.dumps(obj).encode())
        assert 900 <= size <= 1400, (name, size)


def test_dumps(benchmark, body, impl):
    out = benchmark(DUMPS[impl], body)
    assert json.loads(out) == body


def test_loads(benchmark, body, impl):
    # What the original driver sent: json.dumps' text, non-ASCII escaped.
    data = json.dumps(body).encode()
    assert benchmark(LOADS[impl], data) == body


def test_loads_utf8_body(benchmark, body, impl):
    # What fastamqp (orjson) and other senders put on the wire: raw UTF-8 text.
    data = orjson.dumps(body)
    assert benchmark(LOADS[impl], data) == body
