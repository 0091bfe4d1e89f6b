"""The connection engine against the embedded intermediary, on real wire traffic.

Parametrized over the engines (the ``engine`` fixture, tests/conftest.py): the
pure-Python reference on pyngus (fastamqp.engine.pure.connection) and the C engine,
which must pass every test here unchanged.
"""
import threading
import time

import pytest

from fastamqp import exceptions
from fastamqp.engine.pure import connection as pure_connection
from fastamqp.engine import py_codec as codec
from fastamqp.engine.interface import ConnectionSettings, Host, Outcome, Source
from fastamqp.intermediary import Intermediary
from support.connection import (TIMEOUT, connect, deadline, poll_one,  # noqa: F401
                                request)

@pytest.mark.parametrize("mode, product", [("router", "qpid-dispatch-router"),
                                           ("broker", "qpid-cpp")])
def test_peer_product(connect, mode, product):
    with Intermediary(mode=mode) as im:
        conn = connect(im)
        assert conn.peer.product == product
        assert conn.peer.version


def test_send_and_receive_through_a_router(connect, router):
    conn = connect(router)
    sub = conn.subscribe(["openstack.org/om/rpc/anycast/openstack/compute"], 10)
    time.sleep(0.2)  # the router gives senders credit once the consumer is known
    address = "openstack.org/om/rpc/anycast/openstack/compute"
    sent = {}

    def send():
        sent["result"] = conn.send(address, request(address), presettled=False,
                                   deadline=deadline())
    # Through a router the outcome is the consumer's: settle on another thread.
    sender = threading.Thread(target=send)
    sender.start()
    delivery = poll_one(sub)
    assert codec.decode(delivery.payload).request == {"method": "m"}
    sub.settle(delivery, Outcome.ACCEPTED)
    sender.join(TIMEOUT)
    assert sent["result"].outcome is Outcome.ACCEPTED


def test_consumer_outcome_is_relayed_end_to_end(connect, router):
    conn = connect(router)
    address = "openstack.org/om/rpc/unicast/openstack/compute/h1"
    sub = conn.subscribe([address], 10)
    time.sleep(0.2)
    results = []
    sender = threading.Thread(target=lambda: results.append(conn.send(
        address, request(address), presettled=False, deadline=deadline())))
    sender.start()
    sub.settle(poll_one(sub), Outcome.REJECTED)
    sender.join(TIMEOUT)
    assert results[0].outcome is Outcome.REJECTED


def test_store_and_forward_in_a_broker(connect, broker):
    conn = connect(broker)
    address = "unicast.openstack.compute"
    for i in range(5):
        result = conn.send(address, request(address, f"m{i}"), presettled=False,
                           deadline=deadline())
        assert result.outcome is Outcome.ACCEPTED     # the broker took ownership
    sub = conn.subscribe([address], 10)
    got = []
    while len(got) < 5:
        for delivery in sub.poll(5, TIMEOUT):
            got.append(codec.decode(delivery.payload).request["method"])
            sub.settle(delivery, Outcome.ACCEPTED)
    assert got == [f"m{i}" for i in range(5)]


def test_rpc_call_with_dynamic_reply_address_and_heartbeats(connect, router):
    server = connect(router)
    client = connect(router)
    address = "openstack.org/om/rpc/anycast/openstack/svc"
    sub = server.subscribe([address], 10)
    time.sleep(0.2)
    reply_to = client.reply_address(deadline())
    assert reply_to.startswith("amqp:/_topo/0/")

    def serve():
        delivery = poll_one(sub)
        sub.settle(delivery, Outcome.ACCEPTED)
        req = codec.decode(delivery.payload)
        for _ in range(3):   # a slow method, kept alive by heartbeats
            time.sleep(0.3)
            server.send(req.reply_to, codec.encode_heartbeat(req.reply_to,
                                                             req.message_id, 5),
                        presettled=True, deadline=deadline())
        server.send(req.reply_to, codec.encode_reply(req.reply_to, req.message_id,
                                                     response={"answer": 42}),
                    presettled=True, deadline=deadline())
    worker = threading.Thread(target=serve)
    worker.start()
    waiter = client.expect_reply("call-1")
    client.send(address, request(address, message_id="call-1", reply_to=reply_to),
                presettled=False, deadline=deadline())
    # 0.9 s of work, monitored at 0.5 s: only the heartbeats keep the call alive.
    reply = codec.decode(waiter.wait(deadline(), monitor_timeout=0.5))
    worker.join(TIMEOUT)
    assert reply.response == {"answer": 42}


def test_call_monitor_times_out_without_heartbeats(connect, router):
    client = connect(router)
    client.reply_address(deadline())
    waiter = client.expect_reply("silent")
    started = time.monotonic()
    with pytest.raises(exceptions.CallMonitorTimeout):
        waiter.wait(deadline(), monitor_timeout=0.3)
    assert time.monotonic() - started < 2


def test_late_reply_is_refused_with_modified(connect, router):
    client = connect(router)
    server = connect(router)
    reply_to = client.reply_address(deadline())
    result = server.send(reply_to, codec.encode_reply(reply_to, "nobody-waits",
                                                      response=1),
                         presettled=False, deadline=deadline())
    assert result.outcome is Outcome.MODIFIED
    assert result.undeliverable_here and result.delivery_failed


def test_send_without_consumer_gets_no_credit(connect, router):
    conn = connect(router)
    # Multicast and anycast senders get no credit without a consumer (qdrouterd):
    # the send ends at its deadline, never "succeeds".
    with pytest.raises(exceptions.SendTimeout):
        conn.send("openstack.org/om/rpc/anycast/openstack/nobody", request("x"),
                  presettled=False, deadline=deadline(0.5))


@pytest.mark.parametrize("outcome", ["released", "modified", "rejected"])
def test_peer_outcomes(connect, broker, outcome):
    broker.faults.set_outcome("unicast.bad", outcome)
    conn = connect(broker)
    result = conn.send("unicast.bad", request("unicast.bad"), presettled=False,
                       deadline=deadline())
    assert result.outcome is Outcome(outcome)


def test_presettled_send_waits_for_credit(connect, broker):
    broker.faults.withhold_credit("unicast.slow")
    conn = connect(broker)
    # No credit: the message cannot be written, so the send must not report success.
    with pytest.raises(exceptions.SendTimeout):
        conn.send("unicast.slow", request("unicast.slow"), presettled=True,
                  deadline=deadline(0.5))
    assert broker.counters["received"] == 0
    broker.faults.withhold_credit("unicast.slow", False)
    broker.faults.close_links("unicast.slow")   # a new link gets the new credit rules
    time.sleep(0.5)
    result = conn.send("unicast.slow", request("unicast.slow"), presettled=True,
                       deadline=deadline())
    assert result.outcome is Outcome.ACCEPTED


def test_presettled_sends_before_close_all_go_out(connect, broker):
    # A pre-settled send on a link with credit completes as soon as it is queued
    # (the C engine's cview); close() right after must still send every one, in
    # order, also past the broker's credit window (250): those wait for credit.
    address = "unicast.burst"
    conn = connect(broker)
    conn.send(address, request(address, "m0"), presettled=False, deadline=deadline())
    for i in range(1, 1000):
        result = conn.send(address, request(address, f"m{i}"), presettled=True,
                           deadline=deadline())
        assert result.outcome is Outcome.ACCEPTED
    conn.close(TIMEOUT)
    sub = connect(broker).subscribe([address], 1000)
    got = []
    while len(got) < 1000:
        batch = sub.poll(1000, TIMEOUT)
        assert batch, f"{len(got)} of 1000 arrived"
        for delivery in batch:
            got.append(codec.decode(delivery.payload).request["method"])
            sub.settle(delivery, Outcome.ACCEPTED)
    assert got == [f"m{i}" for i in range(1000)]


def test_failover_to_the_second_host(connect):
    with Intermediary(mode="broker") as first, Intermediary(mode="router") as second:
        conn = connect(first, second)
        assert conn.peer.product == "qpid-cpp"
        address = "openstack.org/om/rpc/anycast/openstack/fo"
        sub = conn.subscribe([address], 10)
        first.stop()
        end = time.monotonic() + TIMEOUT
        while conn.peer is None or conn.peer.product != "qpid-dispatch-router":
            assert time.monotonic() < end, "no failover"
            time.sleep(0.05)
        conn.wait_active(TIMEOUT)
        time.sleep(0.3)  # the subscription is re-attached on the new connection
        conn.send(address, request(address), presettled=True, deadline=deadline())
        assert codec.decode(poll_one(sub).payload).request == {"method": "m"}


def test_heartbeat_loss_is_detected(connect, broker):
    conn = connect(broker, idle_timeout=1)
    broker.faults.pause()
    started = time.monotonic()
    while conn.active:
        assert time.monotonic() - started < 2 * 1 + 1, "silent peer not detected"
        time.sleep(0.02)
    # Detected within 2 x idle_timeout (plus scheduling slack) ...
    assert time.monotonic() - started < 3
    broker.faults.resume()
    # ... and the engine reconnects by itself once the peer answers again.
    conn.wait_active(TIMEOUT)


def test_link_detached_by_the_peer_comes_back(connect, broker):
    conn = connect(broker)
    address = "unicast.detach"
    sub = conn.subscribe([address], 10)
    time.sleep(0.2)
    assert broker.faults.close_links(address) >= 1
    time.sleep(1.0)   # link_retry_delay is 0.2 s here
    conn.send(address, request(address), presettled=False, deadline=deadline())
    assert codec.decode(poll_one(sub).payload).request == {"method": "m"}


def test_shared_subscriptions_in_a_broker(connect, broker):
    # interface.Source: links of one name with the "shared" capability consume from
    # one subscription queue (qpidd), from any connection; a plain receiver on the
    # topic has a private one. After the peer detaches them they come back under the
    # same name, still shared.
    topic = "broadcast.openstack.events.info.all"
    members = [connect(broker).subscribe([Source(topic, f"{topic}#g")], 10)
               for _ in range(2)]
    other = connect(broker).subscribe([Source(topic, f"{topic}#h")], 10)
    private = connect(broker).subscribe([topic], 10)
    sender = connect(broker)

    def groups():
        return {name: g["consumers"]
                for name, g in broker.counters["shared_subscriptions"].items()}

    def wait_groups():
        end = deadline()
        while groups() != {f"{topic}#g": 2, f"{topic}#h": 1}:
            assert time.monotonic() < end, groups()
            time.sleep(0.05)

    def take_all(sub, timeout=0.5):
        got = []
        while True:
            batch = sub.poll(10, timeout)
            if not batch:
                return got
            for delivery in batch:
                assert delivery.address == topic
                got.append(codec.decode(delivery.payload).request["method"])
                sub.settle(delivery, Outcome.ACCEPTED)

    for round_ in range(2):
        wait_groups()
        time.sleep(0.2)      # the private receiver's link too
        sent = [f"r{round_}m{i}" for i in range(10)]
        for method in sent:
            assert sender.send(topic, request(topic, method), presettled=False,
                               deadline=deadline()).outcome is Outcome.ACCEPTED
        shares = [take_all(m) for m in members]
        assert sorted(shares[0] + shares[1]) == sorted(sent)   # the group: once each
        assert all(shares)                                     # both members a share
        assert take_all(other) == sent and take_all(private) == sent
        # Every link on the topic (4 receivers, the sender): all come back.
        assert broker.faults.close_links(topic) == 5


def test_many_calls_outstanding(connect, broker):
    """Hundreds of calls in flight on one connection, answered out of order."""
    client = connect(broker)
    server = connect(broker)
    address = "unicast.many"
    sub = server.subscribe([address], 200)
    reply_to = client.reply_address(deadline())
    count = 300
    waiters = {f"c{i}": client.expect_reply(f"c{i}") for i in range(count)}
    for mid in waiters:
        client.send(address, request(address, message_id=mid, reply_to=reply_to),
                    presettled=True, deadline=deadline())
    pending = []
    while len(pending) < count:
        for delivery in sub.poll(100, TIMEOUT):
            sub.settle(delivery, Outcome.ACCEPTED)
            pending.append(codec.decode(delivery.payload))
    for req in reversed(pending):
        server.send(req.reply_to, codec.encode_reply(req.reply_to, req.message_id,
                                                     response=req.message_id),
                    presettled=True, deadline=deadline())
    for mid, waiter in waiters.items():
        assert codec.decode(waiter.wait(deadline())).response == mid


def test_engine_satisfies_the_interface(engine):
    """Every method of fastamqp.engine.interface.Connection, with the same parameters."""
    import inspect

    from fastamqp.engine import interface
    for name, member in vars(interface.Connection).items():
        if name.startswith("_"):
            continue
        ours = getattr(engine.connection, name, None)
        assert ours is not None, f"{engine.connection.__name__} lacks {name}"
        if isinstance(member, property):
            assert isinstance(ours, property), name
            continue
        expected = list(inspect.signature(member).parameters)
        assert list(inspect.signature(ours).parameters) == expected, name


def test_ten_thousand_calls_outstanding(connect, broker):
    """10,000 calls registered and in flight at once on one connection; the replies
    come back in reverse order and each reaches its own waiter."""
    client = connect(broker)
    server = connect(broker)
    address = "unicast.tenk"
    sub = server.subscribe([address], 500)
    reply_to = client.reply_address(deadline())
    count = 10_000
    waiters = [(f"k{i}", client.expect_reply(f"k{i}")) for i in range(count)]
    for mid, _ in waiters:
        client.send(address, request(address, message_id=mid, reply_to=reply_to),
                    presettled=True, deadline=deadline(60))
    requests = []
    while len(requests) < count:
        batch = sub.poll(500, 30)
        assert batch, f"only {len(requests)} of {count} requests arrived"
        for delivery in batch:
            sub.settle(delivery, Outcome.ACCEPTED)
            requests.append(codec.decode(delivery.payload))
    assert len({r.message_id for r in requests}) == count        # no duplicate
    for req in reversed(requests):
        server.send(req.reply_to, codec.encode_reply(req.reply_to, req.message_id,
                                                     response=req.message_id),
                    presettled=True, deadline=deadline(60))
    for mid, waiter in waiters:
        assert codec.decode(waiter.wait(deadline(60))).response == mid


def test_closed_engine_refuses_work(connect, broker):
    conn = connect(broker)
    conn.close(5)
    with pytest.raises(exceptions.EngineClosed):
        conn.send("unicast.closed", request("unicast.closed"), presettled=False,
                  deadline=deadline(2))


def test_multicast_sender_credit_is_topped_up(connect, router):
    """More messages than one credit window through a multicast address, with a
    consumer that keeps up: the router must keep giving the sender credit as it
    forwards (it stores nothing)."""
    conn = connect(router)
    address = "openstack.org/om/rpc/multicast/openstack/fan"
    sub = conn.subscribe([address], 100)
    time.sleep(0.2)
    count = 700      # the embedded router's window is 250
    got = []

    def consume():
        while len(got) < count:
            batch = sub.poll(100, TIMEOUT)
            if not batch:
                return
            for delivery in batch:
                sub.settle(delivery, Outcome.ACCEPTED)
            got.extend(batch)
    consumer = threading.Thread(target=consume)
    consumer.start()
    for i in range(count):
        # Keep the consumer able to keep up: a pre-settled send completes as soon as
        # it is queued, and a router drops pre-settled multicast copies a slow
        # consumer has no room for (as qdrouterd may).
        while i - len(got) >= 100:
            time.sleep(0.005)
        conn.send(address, request(address, f"m{i}"), presettled=True,
                  deadline=deadline())
    consumer.join(TIMEOUT * 2)
    assert len(got) == count


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork()")
def test_a_forked_child_may_not_use_the_parents_connection(connect, router):
    import os
    conn = connect(router)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:   # the child: report through the pipe, never return to pytest
        status = b"no error"
        try:
            conn.send("x", request("x"), presettled=True, deadline=deadline(1))
        except exceptions.EngineClosed as exc:
            status = b"ok" if b"forked" in str(exc).encode() else str(exc).encode()
        except BaseException as exc:   # noqa: B902 - report anything
            status = repr(exc).encode()[:300]
        finally:
            os.write(write_end, status)
            os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    answer = os.read(read_end, 400)
    os.close(read_end)
    assert answer == b"ok", answer
    assert conn.active      # the parent's connection is untouched


def test_a_reply_nobody_can_claim_is_refused_alike(connect, router):
    # Not UTF-8 in an amqp-value string: the pure engine's decoder refuses it, the C
    # engine's reads it and finds no correlation-id. Either way nobody can claim it:
    # both settle it MODIFIED (delivery-failed, undeliverable-here) and keep going.
    client = connect(router)
    other = connect(router)
    reply_to = client.reply_address(deadline())
    time.sleep(0.2)
    result = other.send(reply_to, b"\x00\x53\x77\xa1\x02\xff\xfe", presettled=False,
                        deadline=deadline())
    assert result.outcome is Outcome.MODIFIED
    assert result.delivery_failed and result.undeliverable_here
    assert client.active        # one poison message does not cost the connection


def test_outcome_settled_before_unsubscribing_reaches_the_sender(connect, router):
    # A server that acknowledges a request and stops listening at once (ombt's
    # controller takes the last result and shuts down) must still send the outcome
    # before the detach: a router releases what is unsettled on a closing link, and
    # the caller then sends a request that ran already again (to run twice, or to be
    # released until its deadline).
    sender, server = connect(router), connect(router)
    for i in range(20):
        address = f"openstack.org/om/rpc/unicast/openstack/compute/settle-{i}"
        sub = server.subscribe([address], 10)
        results = []
        sending = threading.Thread(target=lambda: results.append(sender.send(
            address, request(address), presettled=False, deadline=deadline())))
        sending.start()
        sub.settle(poll_one(sub), Outcome.ACCEPTED)
        sub.close()
        sending.join(TIMEOUT)
        assert results and results[0].outcome is Outcome.ACCEPTED, (i, results)
