"""The C engine's own checks: every C object it allocates is freed again.

The engine behaviour itself is tested on both engines in test_connection.py and
test_security.py; here the C objects are counted (fastamqp.engine.c._io.live_objects) before
and after a workload that goes through every path that owns memory: sends of each
kind, calls answered, timed out and cancelled, deliveries settled, dropped unsettled
and settled after their connection died, subscriptions closed while the peer
detaches their links, a failover, and close. ASan covers the same code for invalid
accesses (scripts/sanitize).
"""
import gc
import threading
import time

import pytest

from fastamqp import exceptions
from fastamqp.engine import c_connection, py_codec as codec
from fastamqp.engine.interface import ConnectionSettings, Host, Outcome
from fastamqp.intermediary import Intermediary

pytestmark = [pytest.mark.c_only,
              pytest.mark.skipif(c_connection is None, reason="the C engine is not built")]


def live():
    from fastamqp.engine.c import _io
    return _io.live_objects()


def settle_down(baseline, timeout=10):
    end = time.monotonic() + timeout
    while True:
        gc.collect()
        now = live()
        if now == baseline or time.monotonic() > end:
            return now
        time.sleep(0.05)


def workload(port, second_port, im_faults):
    deadline = lambda s=5: time.monotonic() + s   # noqa: E731
    settings = dict(retry_interval=0.1, link_retry_delay=0.1)
    server = c_connection([Host("127.0.0.1", port)],
                          ConnectionSettings(container_id="leak-server", **settings))
    client = c_connection([Host("127.0.0.1", port), Host("127.0.0.1", second_port)],
                          ConnectionSettings(container_id="leak-client", **settings))
    for conn in (server, client):
        conn.start()
        conn.wait_active(10)
    queue = "unicast.leak"
    sub = server.subscribe([queue], 100)   # room for all 50 unsettled at once
    reply_to = client.reply_address(deadline())
    for i in range(50):
        client.send(queue, codec.encode_request(queue, {"method": f"m{i}"}, {},
                                                message_id=f"c{i}", reply_to=reply_to),
                    presettled=bool(i % 2), deadline=deadline())
    waiters = {f"c{i}": client.expect_reply(f"c{i}") for i in range(0, 50, 2)}
    got = []
    while len(got) < 50:
        batch = sub.poll(50, 5)
        assert batch, f"{len(got)} of 50 arrived"
        got.extend(batch)
    for n, delivery in enumerate(got):
        req = codec.decode(delivery.payload)
        if n % 5 == 4:
            continue                              # dropped without settling
        sub.settle(delivery, Outcome.ACCEPTED if n % 3 else Outcome.RELEASED)
        if req.message_id in waiters:
            server.send(req.reply_to, codec.encode_reply(req.reply_to, req.message_id,
                                                         response=1),
                        presettled=True, deadline=deadline())
    for mid, waiter in list(waiters.items())[:10]:
        try:
            waiter.wait(deadline(2))
        except exceptions.ReplyTimeout:
            pass                                  # the request was released or dropped
    for waiter in list(waiters.values())[10:]:
        waiter.cancel()
    with pytest.raises(exceptions.ReplyTimeout):
        client.expect_reply("never").wait(deadline(0.1))
    im_faults.withhold_credit("unicast.starved")
    with pytest.raises(exceptions.SendTimeout):   # a send that never gets credit
        client.send("unicast.starved", codec.encode_request("x", {}, {}),
                    presettled=False, deadline=deadline(0.2))
    return server, client, sub, got


def test_no_c_object_outlives_its_use():
    gc.collect()
    baseline = live()
    with Intermediary(mode="broker") as im, Intermediary(mode="router") as second:
        server, client, sub, got = workload(im.port, second.port, im.faults)
        # A subscription closed while the peer detaches its links.
        other = server.subscribe(["unicast.leak.other"], 5)
        time.sleep(0.2)
        other.close()
        im.faults.close_links("unicast.leak")
        # Failover of the client to the router while deliveries are unsettled.
        im.faults.drop_connections()
        time.sleep(0.5)
        while got:                                # settled after their connection died
            sub.settle(got.pop(), Outcome.ACCEPTED)
        threading.Thread(target=lambda: sub.poll(1, 0.2)).start()
        client.close(5)
        server.close(5)
        del server, client, sub, got, other
    after = settle_down(baseline)
    assert after == baseline, f"C objects left behind: {after} (before: {baseline})"


def test_engine_garbage_collected_without_close():
    gc.collect()
    baseline = live()
    with Intermediary(mode="broker") as im:
        conn = c_connection([Host("127.0.0.1", im.port)],
                            ConnectionSettings(container_id="gc"))
        conn.start()
        conn.wait_active(10)
        conn.subscribe(["unicast.gc"], 5)
        conn.send("unicast.gc", codec.encode_request("unicast.gc", {}, {}),
                  presettled=True, deadline=time.monotonic() + 5)
        conn.close(5)
        del conn
    assert settle_down(baseline) == baseline


GC_SCRIPT = r'''
import gc
from fastamqp.engine import c_connection
from fastamqp.engine.interface import ConnectionSettings, Host
from fastamqp.intermediary import Intermediary

with Intermediary(mode="broker") as im:
    conn = c_connection([Host("127.0.0.1", im.port)],
                        ConnectionSettings(container_id="gc-cycles"))
    conn.start()
    conn.wait_active(10)
    for i in range(300):
        waiter = conn.expect_reply(f"cycle-{i}")

        class Holder:        # a class per round: classes sit in cycles of their own
            pass
        holder = Holder()
        holder.waiter = waiter                 # a reference cycle holding a reply
        holder.me = holder                     # waiter and its Call
        holder.call = waiter._call
        del waiter, holder
    gc.collect()
    conn.close(5)
    del conn
    gc.collect()
print("ok")
'''


def test_reference_cycles_are_collected_safely(tmp_path):
    """Wrappers of C objects caught in reference cycles (as exception tracebacks make
    them) are freed by the cycle collector: it must not clear their engine reference
    before they release their C object (it did: a segfault in oslo's functional tests).
    In a child process, so that a crash fails this test instead of the run."""
    import subprocess
    import sys
    script = tmp_path / "cycles.py"
    script.write_text(GC_SCRIPT)
    result = subprocess.run([sys.executable, str(script)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "ok", (
        result.returncode, result.stdout[-2000:], result.stderr[-3000:])
