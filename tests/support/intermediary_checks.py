"""The intermediary's behavioural checks that both of its data paths must pass: the
Python ``Intermediary`` (tests/intermediary/test_intermediary.py) and the C ``Relay``
(tests/intermediary/test_relay.py) import these tests, and each module's own
``router``/``broker`` fixtures decide which data path runs them. Also the helpers and
the ``connect`` fixture of independent python-qpid-proton blocking clients.

Every check goes over real AMQP on 127.0.0.1 ephemeral ports; every blocking call has
a timeout of a few seconds, so a regression fails instead of hanging.
"""
import time
import uuid

import pytest
from proton import ConnectionException, Delivery, Message, Timeout
from proton.reactor import AtMostOnce
from proton.utils import BlockingConnection, SendException

from fastamqp.intermediary import routing

T = 5.0        # ordinary wait
SHORT = 0.5    # wait that is expected to expire
ANYCAST = "openstack.org/om/rpc/anycast/openstack/compute"
UNICAST = "openstack.org/om/rpc/unicast/openstack/compute/host1"
MULTICAST = "openstack.org/om/rpc/multicast/openstack/compute"


@pytest.fixture
def connect():
    """Open blocking client connections, all closed (best effort) at teardown."""
    opened = []

    def _connect(im, **kw):
        c = BlockingConnection(im.url, timeout=T, **kw)
        opened.append(c)
        return c
    yield _connect
    for c in opened:
        try:
            c.close()
        except Exception:
            pass


def rx(conn, address, **kw):
    # proton's Container names links "<container>-<address>", so a second link to the
    # same address on one connection would reuse a name; always pass a unique one.
    return conn.create_receiver(address, name=uuid.uuid4().hex, **kw)


def tx(conn, address, **kw):
    return conn.create_sender(address, name=uuid.uuid4().hex, **kw)


def pump(conn, secs=0.1):
    """Let a blocking client process I/O for a while without waiting for anything."""
    try:
        conn.wait(lambda: False, timeout=secs)
    except Timeout:
        pass


def until(pred, conns=(), timeout=T):
    deadline = time.monotonic() + timeout
    while True:
        for c in conns:
            pump(c, 0.02)
        if pred():
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not met within %ss" % timeout)
        time.sleep(0.01)


def vanish(conn):
    """Drop a client's TCP connection without detaching links or settling anything."""
    conn.conn.transport.close_tail()
    conn.conn.transport.close_head()
    try:
        pump(conn, 0.1)
    except ConnectionException:
        pass


def drain(rcv, n, accept=True):
    bodies = []
    for _ in range(n):
        bodies.append(rcv.receive(timeout=T).body)
        if accept:
            rcv.accept()
    return bodies


def send_async(snd, body):
    """Unsettled send that does not wait for the outcome (the consumer may be us)."""
    return snd.link.send(Message(body=body))


def test_router_balanced_spreads_over_consumers(router, connect):
    c = connect(router)
    r1 = rx(c, ANYCAST, credit=10)
    r2 = rx(c, ANYCAST, credit=10)
    s = tx(c, ANYCAST)
    until(lambda: s.link.credit > 0, [c])
    sent = [send_async(s, i) for i in range(10)]
    got1, got2 = drain(r1, 5), drain(r2, 5)
    assert sorted(got1 + got2) == list(range(10))
    c.wait(lambda: all(d.settled for d in sent), timeout=T)
    assert all(d.remote_state == Delivery.ACCEPTED for d in sent)


def test_router_closest(router, connect):
    c = connect(router)
    r1 = rx(c, UNICAST, credit=10)
    s = tx(c, UNICAST, options=AtMostOnce())
    until(lambda: s.link.credit > 0, [c])
    for i in range(4):
        s.send(Message(body=i), timeout=T)
    assert drain(r1, 4, accept=False) == [0, 1, 2, 3]
    r2 = rx(c, UNICAST, credit=10)
    for i in range(4, 10):
        s.send(Message(body=i), timeout=T)
    got = []
    until(lambda: got.extend(_ready(r1) + _ready(r2)) or len(got) >= 6, [c])
    assert sorted(got) == list(range(4, 10))


def _ready(rcv):
    out = []
    while rcv.fetcher.has_message:
        out.append(rcv.receive(timeout=T).body)   # pre-settled: nothing to accept
    return out


def test_router_multicast_fans_out(router, connect):
    c = connect(router)
    rcvs = [rx(c, MULTICAST, credit=10) for _ in range(3)]
    s = tx(c, MULTICAST)
    until(lambda: s.link.credit > 0, [c])
    for i in range(3):
        d = s.send(Message(body=i), timeout=T)   # accepted by the router itself
        assert d.remote_state == Delivery.ACCEPTED
    for r in rcvs:
        assert drain(r, 3, accept=False) == [0, 1, 2]
        # multicast copies arrive pre-settled
        assert not r.fetcher.unsettled
    assert router.counters["forwarded"] == 9


def test_router_multicast_no_credit_without_consumer(router, connect):
    c = connect(router)
    s = tx(c, MULTICAST)
    pump(c, 0.3)
    assert s.link.credit == 0
    rx(c, MULTICAST, credit=1)
    until(lambda: s.link.credit > 0, [c])


def test_router_releases_when_no_consumer(router, connect):
    c = connect(router)
    r = rx(c, ANYCAST, credit=5)
    s = tx(c, ANYCAST)
    until(lambda: s.link.credit == routing.DEFAULT_WINDOW, [c])
    r.close()
    with pytest.raises(SendException) as e:
        s.send(Message(body="lost"), timeout=T)
    assert e.value.state == Delivery.RELEASED
    # DISPATCH-1012: no replacement credit while the address is unreachable
    pump(c, 0.3)
    assert s.link.credit == routing.DEFAULT_WINDOW - 1
    assert router.counters["released"] == 1


def check_congested_consumer_discards_presettled(im, connect, address, window):
    """qdrouterd 1.19's rule (src/router_core/forwarder.c, qdr_forward_deliver_CT): a
    pre-settled delivery meeting a consumer link with ``window`` (linkCapacity) or more
    undelivered first discards every pre-settled delivery there but the head."""
    cons = connect(im)
    r = rx(cons, address, credit=1)     # takes what its credit allows, then sleeps
    pump(cons, 0.1)
    c = connect(im)
    s = tx(c, address, options=AtMostOnce())
    until(lambda: s.link.credit > 0, [c])
    n = window + 20
    for i in range(n):
        s.send(Message(body=i), timeout=T)     # pre-settled: never waits for credit
    until(lambda: im.counters["received"] == n, [c])
    assert im.counters["dropped_presettled"] == window - 1
    assert im.counters["dropped"] == window - 1
    got = []
    until(lambda: got.extend(_ready(r)) or len(got) >= n - (window - 1), [cons])
    # k went out on the consumer's credit (proton's blocking receiver grants one or
    # two), k..k+window-1 filled its undelivered list, and the next one discarded all
    # of those but the head k: the oldest go, the newest stay.
    lost = sorted(set(range(n)) - set(got))
    k = lost[0] - 1
    assert 1 <= k <= 2 and got == sorted(got)
    assert lost == list(range(k + 1, k + window))


@pytest.mark.parametrize("address", [ANYCAST, MULTICAST])
def test_router_congested_consumer_discards_presettled(router, connect, address):
    check_congested_consumer_discards_presettled(router, connect, address,
                                                 routing.DEFAULT_WINDOW)


def test_router_unsettled_hold_credit_and_are_never_discarded(router, connect):
    """Unsettled deliveries hold their producer's credit until the consumer settles
    them (qdrouterd replenishes it on settlement), so a slow consumer slows the
    producer down instead of losing anything."""
    w = routing.DEFAULT_WINDOW
    cons = connect(router)
    r = rx(cons, ANYCAST, credit=1)
    pump(cons, 0.1)
    c = connect(router)
    s = tx(c, ANYCAST)
    until(lambda: s.link.credit > 0, [c])
    n = w + 50
    sent = [send_async(s, i) for i in range(n)]
    until(lambda: router.counters["received"] == w, [c])
    pump(c, 0.3)
    assert router.counters["received"] == w      # the rest wait for credit
    got = []
    r.link.flow(n)       # the consumer catches up

    def take():
        # BlockingReceiver.receive() manages the link's credit itself (its prefetch of
        # 1): keep granting, or the consumer may stall with credit 1 mid-way.
        if r.link.credit < 10:
            r.link.flow(n)
        while r.fetcher.has_message:
            got.append(r.receive(timeout=T).body)
            r.accept()
        return len(got) >= n
    until(take, [cons, c])
    assert got == list(range(n))
    until(lambda: all(d.settled for d in sent), [cons, c])
    assert all(d.remote_state == Delivery.ACCEPTED for d in sent)
    assert router.counters["dropped_presettled"] == 0


@pytest.mark.parametrize("action,state", [("accept", Delivery.ACCEPTED),
                                          ("reject", Delivery.REJECTED),
                                          ("release", Delivery.RELEASED),
                                          ("modify", Delivery.MODIFIED)])
def test_router_relays_consumer_outcome(router, connect, action, state):
    c = connect(router)
    r = rx(c, ANYCAST, credit=1)
    s = tx(c, ANYCAST)
    until(lambda: s.link.credit > 0, [c])
    d = send_async(s, "x")
    assert r.receive(timeout=T).body == "x"
    pump(c, 0.1)
    assert not d.settled          # the router waits for the consumer's outcome
    if action == "accept":
        r.accept()
    elif action == "reject":
        r.reject()
    elif action == "release":
        r.release(delivered=False)
    else:
        # BlockingReceiver.release(delivered=True) sends MODIFIED without the
        # delivery-failed flag, so set the flags on the delivery itself.
        dlv = r.fetcher.unsettled[0]
        dlv.local.failed = True
        dlv.local.undeliverable = True
        r.settle(Delivery.MODIFIED)
    c.wait(lambda: d.settled, timeout=T)
    assert d.remote_state == state
    if action == "modify":
        assert d.remote.failed and d.remote.undeliverable


def test_router_dynamic_source(router, connect):
    c = connect(router)
    r = rx(c, None, dynamic=True, credit=5)
    addr = r.link.remote_source.address
    assert addr.startswith("amqp:/_topo/0/fastamqp/temp.")
    s = tx(c, addr)
    until(lambda: s.link.credit > 0, [c])
    d = send_async(s, "reply")
    assert r.receive(timeout=T).body == "reply"
    r.accept()
    c.wait(lambda: d.settled, timeout=T)
    assert d.remote_state == Delivery.ACCEPTED


def test_router_credit_waits_for_consumer(router, connect):
    c = connect(router)
    s = tx(c, ANYCAST)
    pump(c, 0.3)
    assert s.link.credit == 0
    with pytest.raises(Timeout):
        s.send(Message(body="early"), timeout=SHORT)
    r = rx(c, ANYCAST, credit=5)
    # the queued delivery goes out once the consumer makes the address reachable
    assert r.receive(timeout=T).body == "early"
    r.accept()
    until(lambda: s.link.credit == routing.DEFAULT_WINDOW, [c])


def test_router_consumer_disconnect_modifies_in_flight(router, connect):
    prod = connect(router)
    cons = connect(router)
    r = rx(cons, ANYCAST, credit=1)
    s = tx(prod, ANYCAST)
    until(lambda: s.link.credit > 0, [prod])
    d = send_async(s, "in flight")
    pump(prod)
    assert r.receive(timeout=T).body == "in flight"
    vanish(cons)
    prod.wait(lambda: d.settled, timeout=T)
    # As qdrouterd 1.19 answers (checked side by side): the consumer had it and may
    # have acted on it, so not released but modified, delivery-failed.
    assert d.remote_state == Delivery.MODIFIED and d.remote.failed
    until(lambda: router.counters["connections"] == 1, [prod])


def test_broker_store_and_forward(broker, connect):
    c = connect(broker)
    s = tx(c, "unicast.openstack.compute")
    for i in range(10):
        d = s.send(Message(body=i), timeout=T)     # the broker accepts on enqueue
        assert d.remote_state == Delivery.ACCEPTED
    assert broker.counters["stored"] == 10
    r = rx(c, "unicast.openstack.compute", credit=10)
    assert drain(r, 10) == list(range(10))
    until(lambda: broker.counters["acknowledged"] == 10, [c])
    assert broker.counters["stored"] == 0


def test_broker_competing_consumers(broker, connect):
    c = connect(broker)
    r1 = rx(c, "exclusive.openstack.compute.host1", credit=10)
    r2 = rx(c, "exclusive.openstack.compute.host1", credit=10)
    s = tx(c, "exclusive.openstack.compute.host1")
    for i in range(10):
        s.send(Message(body=i), timeout=T)
    got1, got2 = drain(r1, 5), drain(r2, 5)
    assert sorted(got1 + got2) == list(range(10))
    assert not set(got1) & set(got2)


def test_broker_topic_fans_out(broker, connect):
    c = connect(broker)
    s = tx(c, "broadcast.openstack.compute.all")
    s.send(Message(body="nobody"), timeout=T)     # no subscriber: not stored
    subs = [rx(c, "broadcast.openstack.compute.all", credit=10)
            for _ in range(2)]
    for i in range(3):
        s.send(Message(body=i), timeout=T)
    for r in subs:
        assert drain(r, 3) == [0, 1, 2]
    assert broker.counters["stored"] == 0


@pytest.mark.parametrize("delivered", [False, True])
def test_broker_released_message_is_redelivered(broker, connect, delivered):
    c = connect(broker)
    s = tx(c, "unicast.work")
    s.send(Message(body="again"), timeout=T)
    r = rx(c, "unicast.work", credit=1)
    assert r.receive(timeout=T).body == "again"
    r.release(delivered=delivered)       # released, or modified(delivery-failed)
    assert r.receive(timeout=T).body == "again"
    r.accept()
    until(lambda: broker.counters["requeued"] == 1, [c])


def test_broker_rejected_message_is_dropped(broker, connect):
    c = connect(broker)
    s = tx(c, "unicast.poison")
    s.send(Message(body="poison"), timeout=T)
    r = rx(c, "unicast.poison", credit=1)
    assert r.receive(timeout=T).body == "poison"
    r.reject()
    until(lambda: broker.counters["dropped"] == 1, [c])
    with pytest.raises(Timeout):
        r.receive(timeout=SHORT)


def test_broker_consumer_disconnect_requeues(broker, connect):
    c1 = connect(broker)
    r1 = rx(c1, "unicast.jobs", credit=1)
    c2 = connect(broker)
    s = tx(c2, "unicast.jobs")
    s.send(Message(body="job"), timeout=T)
    assert r1.receive(timeout=T).body == "job"     # unsettled, then the client dies
    vanish(c1)
    r2 = rx(c2, "unicast.jobs", credit=1)
    assert r2.receive(timeout=T).body == "job"
    r2.accept()
