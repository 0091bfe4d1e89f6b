"""The embedded intermediary against independent python-qpid-proton clients.

Every check goes over real AMQP on 127.0.0.1 ephemeral ports; the clients are plain
proton.utils blocking clients, never fastamqp code. Every blocking call has a timeout
of a few seconds, so a regression fails instead of hanging.

The checks the C relay must pass too are in tests/support/intermediary_checks.py; they
are imported here and run on this module's ``router``/``broker`` fixtures.
"""
import time

import pytest
from proton import ConnectionException, Delivery, Message, Timeout, symbol
from proton.reactor import AtMostOnce
from proton.utils import BlockingConnection, LinkDetached

from fastamqp.intermediary import Intermediary, routing
from support.intermediary_checks import (  # noqa: F401 (fixture and shared tests)
    ANYCAST, MULTICAST, SHORT, T, UNICAST, check_congested_consumer_discards_presettled,
    connect, drain, pump, rx, send_async, tx, until, vanish,
    test_broker_competing_consumers,
    test_broker_consumer_disconnect_requeues,
    test_broker_rejected_message_is_dropped,
    test_broker_released_message_is_redelivered,
    test_broker_store_and_forward,
    test_broker_topic_fans_out,
    test_router_balanced_spreads_over_consumers,
    test_router_closest,
    test_router_congested_consumer_discards_presettled,
    test_router_consumer_disconnect_modifies_in_flight,
    test_router_credit_waits_for_consumer,
    test_router_dynamic_source,
    test_router_multicast_fans_out,
    test_router_multicast_no_credit_without_consumer,
    test_router_releases_when_no_consumer,
    test_router_relays_consumer_outcome,
    test_router_unsettled_hold_credit_and_are_never_discarded,
)


@pytest.fixture
def router():
    im = Intermediary(mode="router")
    im.start()
    yield im
    im.stop()


@pytest.fixture
def broker():
    im = Intermediary(mode="broker")
    im.start()
    yield im
    im.stop()


@pytest.fixture
def make_im():
    """Intermediaries made inside a test; list it before ``connect`` so the clients
    are closed first (closing against a stopped peer waits for a timeout)."""
    made = []

    def _make(**kw):
        im = Intermediary(**kw).start()
        made.append(im)
        return im
    yield _make
    for im in made:
        im.stop()


# -- both modes ----------------------------------------------------------------------

@pytest.mark.parametrize("mode,product", [("router", "qpid-dispatch-router"),
                                          ("broker", "qpid-cpp")])
def test_open_properties(mode, product, make_im, connect):
    im = make_im(mode=mode)
    assert im.url == "amqp://127.0.0.1:%d" % im.port and im.port > 0
    c = connect(im)
    props = c.conn.remote_properties
    assert props[symbol("product")] == product
    assert props[symbol("version")]
    assert c.conn.remote_container
    assert im.counters["connections"] == 1


def test_product_override_and_several_listeners(connect):
    with Intermediary(mode="router", product="router",
                      listen=[("127.0.0.1", 0), ("127.0.0.1", 0)]) as im:
        assert len(im.ports) == 2 and len(set(im.ports)) == 2
        for url in im.urls:
            c = BlockingConnection(url, timeout=T)
            try:
                assert c.conn.remote_properties[symbol("product")] == "router"
            finally:
                c.close()


def test_address_table_defaults():
    t = routing.AddressTable(routing.ROUTER_ADDRESSES, routing.BALANCED)
    assert t.lookup("unicast.openstack.compute") == routing.CLOSEST
    assert t.lookup("exclusive.openstack.compute.host1") == routing.CLOSEST
    assert t.lookup("broadcast.openstack.compute.all") == routing.MULTICAST
    assert t.lookup(ANYCAST) == routing.BALANCED
    assert t.lookup(UNICAST) == routing.CLOSEST
    assert t.lookup(MULTICAST) == routing.MULTICAST
    assert t.lookup("openstack.org/om/notify/anycast/openstack/notifications.info") \
        == routing.BALANCED
    assert t.lookup("unicastfoo") == routing.BALANCED   # token boundary
    assert t.lookup("something/else") == routing.BALANCED


# -- router ----------------------------------------------------------------------------


def test_router_presettled_without_consumer_is_dropped(router, connect):
    c = connect(router)
    r = rx(c, ANYCAST, credit=5)
    s = tx(c, ANYCAST, options=AtMostOnce())
    until(lambda: s.link.credit > 0, [c])
    r.close()
    s.send(Message(body="gone"), timeout=T)
    until(lambda: router.counters["dropped"] == 1, [c])
    assert router.counters["addresses"][ANYCAST]["dropped"] == 1
    assert router.counters["dropped_presettled"] == 1


def test_router_link_capacity_is_configurable(make_im, connect):
    im = make_im(mode="router", window=20)
    check_congested_consumer_discards_presettled(im, connect, ANYCAST, 20)


# -- broker ----------------------------------------------------------------------------


def test_broker_dynamic_temp_queue(broker, connect):
    c = connect(broker)
    r = rx(c, None, dynamic=True, credit=5)
    addr = r.link.remote_source.address
    assert addr and not addr.startswith("amqp:/_topo")
    s = tx(c, addr)
    s.send(Message(body="to temp"), timeout=T)
    assert r.receive(timeout=T).body == "to temp"
    r.accept()
    assert addr in broker._server.core.queues
    r.close()
    until(lambda: addr not in broker._server.core.queues, [c])


# -- fault hooks -----------------------------------------------------------------------

def test_fault_drop_connections(router, connect):
    c = connect(router)
    until(lambda: router.counters["connections"] == 1)
    assert router.faults.drop_connections() == 1
    with pytest.raises(ConnectionException):
        c.wait(lambda: False, timeout=T)
    c2 = connect(router)                       # still serving
    assert c2.conn.remote_properties


def test_fault_pause_lets_heartbeats_lapse(router, connect):
    c = connect(router, heartbeat=1)
    pump(c, 1.5)                               # heartbeats flow while not paused
    router.faults.pause()
    try:
        t0 = time.monotonic()
        with pytest.raises(ConnectionException):
            c.wait(lambda: False, timeout=T)
        assert time.monotonic() - t0 < T
    finally:
        router.faults.resume()
    assert connect(router).conn.remote_properties


def test_fault_refuse_links(router, connect):
    router.faults.refuse_links("unicast.refused")
    c = connect(router)
    with pytest.raises(LinkDetached) as e:
        tx(c, "unicast.refused.x")
    assert e.value.condition == "amqp:not-found"
    with pytest.raises(LinkDetached):
        rx(c, "unicast.refused.y")
    rx(c, "unicast.other")         # other addresses unaffected
    router.faults.allow_links("unicast.refused")
    tx(c, "unicast.refused.x")


def test_fault_close_links(broker, connect):
    c = connect(broker)
    rx(c, "unicast.closing", credit=1)
    keep = rx(c, "unicast.keep", credit=1)
    assert broker.faults.close_links("unicast.closing") == 1
    with pytest.raises(LinkDetached) as e:
        c.wait(lambda: False, timeout=T)
    assert e.value.condition == "amqp:link:detach-forced"
    assert keep.link.state & keep.link.REMOTE_ACTIVE
    until(lambda: broker.counters["links"] == 1, [c])


@pytest.mark.parametrize("mode", ["router", "broker"])
@pytest.mark.parametrize("outcome,state", [("released", Delivery.RELEASED),
                                           ("modified", Delivery.MODIFIED),
                                           ("rejected", Delivery.REJECTED)])
def test_fault_set_outcome(mode, outcome, state, make_im, connect):
    im = make_im(mode=mode)
    im.faults.set_outcome("unicast.odd", outcome)
    c = connect(im)
    r = rx(c, "unicast.odd", credit=1)
    s = tx(c, "unicast.odd")
    d = s.send(Message(body="x"), timeout=T, error_states=[])
    assert d.remote_state == state
    with pytest.raises(Timeout):
        r.receive(timeout=0.2)            # not routed
    assert im.counters[outcome] == 1
    im.faults.set_outcome("unicast.odd", None)
    d = send_async(s, "y")              # routed again (the router waits for r)
    assert r.receive(timeout=T).body == "y"
    r.accept()
    c.wait(lambda: d.settled, timeout=T)
    assert d.remote_state == Delivery.ACCEPTED


def test_fault_withhold_credit(broker, connect):
    broker.faults.withhold_credit("unicast.slow", True)
    c = connect(broker)
    s = tx(c, "unicast.slow")
    with pytest.raises(Timeout):
        s.send(Message(body=1), timeout=SHORT)
    assert s.link.credit <= 0       # proton counts the queued delivery against credit
    broker.faults.withhold_credit("unicast.slow", False)
    d = s.send(Message(body=2), timeout=T)
    assert d.remote_state == Delivery.ACCEPTED
    r = rx(c, "unicast.slow", credit=5)
    assert drain(r, 2) == [1, 2]


def test_fault_restart_same_port(router, connect):
    port = router.port
    c = connect(router)
    router.faults.restart()
    assert router.port == port
    with pytest.raises(ConnectionException):
        c.wait(lambda: False, timeout=T)
    c2 = connect(router)
    assert c2.conn.remote_properties
    assert router.counters["restarts"] == 1
