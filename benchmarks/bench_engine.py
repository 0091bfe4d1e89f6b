"""pytest-benchmark micro benchmarks of the engines: the hand-off of a send between a
Python thread and the I/O thread, and reply correlation.

    PYTHONPATH=. .venv/bin/pytest benchmarks/bench_engine.py --benchmark-group-by=func

Each case runs both connection engines (``[c]`` when it is built, ``[python]``) through
the relay in broker mode, in this process; not a test of speed (nothing is asserted
about time), only of what one operation costs:

* ``send_presettled``: ``Connection.send`` of a 1 KiB request, pre-settled, on a link
  that has credit (the C engine completes it when queued, the pure engine when written);
* ``send_unsettled``: the same, waiting for the broker's outcome (a round trip);
* ``reply_correlation``: ``expect_reply``, a reply sent to the reply address from a
  second connection, and ``wait`` until it reaches its waiter by correlation id.
"""
import itertools
import time

import pytest

from fastamqp import codec
from fastamqp.engine.pure.connection import Connection as PureConnection
from fastamqp.engine import c_connection
from fastamqp.engine.interface import ConnectionSettings, Host

ENGINES = [pytest.param(PureConnection, id="python")]
if c_connection is not None:
    ENGINES.append(pytest.param(c_connection, id="c"))
TIMEOUT = 10.0
_ids = itertools.count()


@pytest.fixture(scope="module")
def relay():
    from fastamqp.intermediary import relay as relay_mod
    if not relay_mod.available():
        pytest.skip("the relay (C intermediary) is not built")
    with relay_mod.Relay(mode="broker") as r:
        yield r


@pytest.fixture(params=ENGINES)
def connect(request, relay):
    opened = []

    def make():
        conn = request.param([Host("127.0.0.1", relay.port)], ConnectionSettings(
            container_id=f"bench-{next(_ids)}"))
        conn.start()
        conn.wait_active(TIMEOUT)
        opened.append(conn)
        return conn
    yield make
    for conn in opened:
        conn.close(5)


def _request(address):
    return codec.encode_request(address, {"method": "m", "args": {"data": "x" * 1024}},
                                {"user": "u"})


def test_send_presettled(benchmark, connect):
    conn = connect()
    address = f"unicast.bench.pre{next(_ids)}"
    payload = _request(address)
    conn.send(address, payload, presettled=False, deadline=time.monotonic() + TIMEOUT)
    benchmark(lambda: conn.send(address, payload, presettled=True,
                                deadline=time.monotonic() + TIMEOUT))


def test_send_unsettled(benchmark, connect):
    conn = connect()
    address = f"unicast.bench.uns{next(_ids)}"
    payload = _request(address)
    benchmark(lambda: conn.send(address, payload, presettled=False,
                                deadline=time.monotonic() + TIMEOUT))


def test_reply_correlation(benchmark, connect):
    client, server = connect(), connect()
    reply_to = client.reply_address(time.monotonic() + TIMEOUT)

    def one_call():
        message_id = codec.new_message_id()
        waiter = client.expect_reply(message_id)
        try:
            server.send(reply_to, codec.encode_reply(reply_to, message_id, response=1),
                        presettled=True, deadline=time.monotonic() + TIMEOUT)
            return waiter.wait(time.monotonic() + TIMEOUT)
        finally:
            waiter.cancel()
    assert codec.decode(one_call()).response == 1
    benchmark(one_call)
