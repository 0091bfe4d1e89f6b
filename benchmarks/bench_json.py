"""JSON micro benchmarks: fastamqp._jsoncodec vs stdlib json on 1 KiB oslo.messaging bodies.

    .venv/bin/pytest benchmarks/bench_json.py --benchmark-group-by=param:body,func

Each group holds the stdlib row and ours for one body and one direction; compare rows
of one run only. "dumps" is json.dumps(obj).encode() (what the wire needs), "loads" is
json.loads(data.decode()) against our json_loads(data) on the same UTF-8 bytes.
"""
import json
import uuid

import pytest

_json = pytest.importorskip("fastamqp._jsoncodec", reason="C extension not built")

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


@pytest.fixture(params=sorted(BODIES), ids=sorted(BODIES))
def body(request):
    return BODIES[request.param]


def test_sizes():
    for name, obj in BODIES.items():
        size = len(json.dumps(obj).encode())
        assert 900 <= size <= 1400, (name, size)


def test_dumps_stdlib(benchmark, body):
    benchmark(lambda: json.dumps(body).encode())


def test_dumps_fastamqp(benchmark, body):
    assert benchmark(_json.json_dumps, body) == json.dumps(body).encode()


def test_loads_stdlib(benchmark, body):
    data = json.dumps(body).encode()
    benchmark(lambda: json.loads(data.decode("utf-8")))


def test_loads_fastamqp(benchmark, body):
    data = json.dumps(body).encode()
    assert benchmark(_json.json_loads, data) == json.loads(data)


def test_loads_fastamqp_utf8_body(benchmark, body):
    # What another sender (ensure_ascii=False) may put on the wire: raw UTF-8 text.
    data = json.dumps(body, ensure_ascii=False).encode()
    assert benchmark(_json.json_loads, data) == json.loads(data)


def test_loads_stdlib_utf8_body(benchmark, body):
    data = json.dumps(body, ensure_ascii=False).encode()
    benchmark(lambda: json.loads(data.decode("utf-8")))
