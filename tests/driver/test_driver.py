"""oslo.messaging 18 over fastamqp (``amqp://``) through the embedded intermediary:
RPC in router mode (as through qdrouterd) and in broker mode (qpidd), notifications
through the broker. These drive the public oslo.messaging API end to end.

oslo.messaging 18.3's tracing options live on the global cfg.CONF (a private
ConfigOpts fails on send), so the tests use cfg.CONF and reset it afterwards.
"""
import time

import oslo_messaging
import pytest
from oslo_config import cfg

from fastamqp import driver as fastamqp_driver
from fastamqp.intermediary import Intermediary
from support.oslo_checks import (Calculator, Recorder,  # noqa: F401
                                 check_notification_stored_then_delivered)
from support.oslo_env import transport_factory

TIMEOUT = 10


@pytest.fixture
def conf():
    cfg.CONF.reset()
    yield cfg.CONF
    cfg.CONF.reset()


@pytest.fixture(params=["router", "broker"])
def bus(request):
    with Intermediary(mode=request.param) as im:
        yield im


@pytest.fixture
def transports(conf):
    yield from transport_factory(conf)


def start_server(transport, endpoint, topic="calc", server="host1"):
    target = oslo_messaging.Target(topic=topic, server=server)
    rpc_server = oslo_messaging.get_rpc_server(transport, target, [endpoint],
                                               executor="threading")
    rpc_server.start()
    return rpc_server


def stop(rpc_server):
    rpc_server.stop()
    rpc_server.wait()


def test_driver_is_the_amqp_plugin(conf, transports):
    transport = transports("amqp://127.0.0.1:1/")
    assert isinstance(transport._driver, fastamqp_driver.ProtonDriver)


def test_rpc_patterns(bus, transports):
    transport = transports(bus.url)
    endpoint = Calculator()
    rpc_server = start_server(transport, endpoint)
    try:
        time.sleep(0.3)  # the server's links reach the intermediary
        client = oslo_messaging.get_rpc_client(
            transport, oslo_messaging.Target(topic="calc"), timeout=TIMEOUT)
        assert client.call({}, "add", a=2, b=3) == 5                      # anycast
        direct = client.prepare(server="host1")
        assert direct.call({}, "add", a=1, b=1) == 2                      # unicast
        client.cast({}, "record", value="cast")                            # cast
        assert endpoint.cast_seen.wait(TIMEOUT)
        endpoint.cast_seen.clear()
        client.prepare(fanout=True).cast({}, "record", value="fanout")     # multicast
        assert endpoint.cast_seen.wait(TIMEOUT)
        assert endpoint.casts == ["cast", "fanout"]
        with pytest.raises(ValueError, match="the server says no"):
            client.call({}, "fail")
        ctxt = {"user": "u1", "traceparent": "00-0af7651916cd43dd8448eb211c80319c-"
                                             "b7ad6b7169203331-01"}
        assert client.call(ctxt, "context_echo") == ctxt                # trace keys
    finally:
        stop(rpc_server)


def test_call_timeout_is_a_messaging_timeout(bus, transports):
    transport = transports(bus.url)
    client = oslo_messaging.get_rpc_client(
        transport, oslo_messaging.Target(topic="nobody-listens"), timeout=1)
    started = time.monotonic()
    with pytest.raises(oslo_messaging.MessagingTimeout):
        client.call({}, "add", a=1, b=2)
    assert time.monotonic() - started < 5


def test_call_monitor_keeps_a_slow_call_alive(transports):
    with Intermediary(mode="router") as router:
        transport = transports(router.url)
        rpc_server = start_server(transport, Calculator())
        try:
            time.sleep(0.3)
            client = oslo_messaging.get_rpc_client(
                transport, oslo_messaging.Target(topic="calc"), timeout=TIMEOUT,
                call_monitor_timeout=2)
            # 3.5 s of work with a 2 s monitor (oslo's server heartbeats every 1 s;
            # it refuses monitors under 2 s): only heartbeats keep the call alive.
            assert client.call({}, "slow", seconds=3.5) == "done"
        finally:
            stop(rpc_server)


def test_notifications_through_a_broker(transports):
    with Intermediary(mode="broker") as broker:
        check_notification_stored_then_delivered(transports, broker.url)


def test_malformed_message_is_rejected_and_the_server_keeps_serving(transports):
    with Intermediary(mode="broker") as broker:
        transport = transports(broker.url)
        rpc_server = start_server(transport, Calculator())
        try:
            time.sleep(0.3)
            # A poison message straight onto the server's queue (legacy addressing).
            from fastamqp.engine.pure.connection import Connection
            from fastamqp.engine.interface import ConnectionSettings, Host
            raw = Connection([Host("127.0.0.1", broker.port)],
                             ConnectionSettings(container_id="poison"))
            raw.start()
            raw.wait_active(TIMEOUT)
            raw.send("unicast.openstack.calc", b"\x00Sw\xa1\x07not json",
                     presettled=False, deadline=time.monotonic() + TIMEOUT)
            raw.close(5)
            client = oslo_messaging.get_rpc_client(
                transport, oslo_messaging.Target(topic="calc"), timeout=TIMEOUT)
            assert client.call({}, "add", a=20, b=22) == 42
            # The listener refused the poison message (the broker drops what a
            # consumer rejects) instead of taking it back for redelivery.
            calc = broker.counters["addresses"]["unicast.openstack.calc"]
            assert calc["dropped"] == 1 and calc["requeued"] == 0
        finally:
            stop(rpc_server)


# ---- transport_options.at_least_once through a router --------------------------------

AT_LEAST_ONCE = oslo_messaging.TransportOptions(at_least_once=True)


@pytest.mark.parametrize("kind", ["call", "cast"])
def test_at_least_once_without_a_consumer_is_undeliverable(router, transports, kind):
    # qdrouterd gives a sender no credit while nobody consumes the address: that is its
    # "no route", which at_least_once must report as MessageUndeliverable, well before
    # the caller's 30 s timeout (the driver gives up after AT_LEAST_ONCE_CREDIT_WAIT).
    transport = transports(router.url)
    client = oslo_messaging.get_rpc_client(
        transport, oslo_messaging.Target(topic="nobody-listens"), timeout=30,
        transport_options=AT_LEAST_ONCE)
    started = time.monotonic()
    with pytest.raises(oslo_messaging.MessageUndeliverable) as info:
        if kind == "call":
            client.call({}, "add", a=1, b=2)
        else:
            client.cast({}, "record", value="lost")
    took = time.monotonic() - started
    assert took < fastamqp_driver.AT_LEAST_ONCE_CREDIT_WAIT + 5, took
    assert info.value.routing_key == "nobody-listens"
    # Nothing went out: the router saw no message for the address.
    assert router.counters["received"] == 0


def test_a_message_reported_undeliverable_is_never_delivered_later(router, transports):
    transport = transports(router.url)
    client = oslo_messaging.get_rpc_client(
        transport, oslo_messaging.Target(topic="late"), timeout=30,
        transport_options=AT_LEAST_ONCE)
    with pytest.raises(oslo_messaging.MessageUndeliverable):
        client.cast({}, "record", value="ghost")
    endpoint = Calculator()
    rpc_server = start_server(transport, endpoint, topic="late")
    try:
        # The consumer arrives after the caller was told "undeliverable".
        assert not endpoint.cast_seen.wait(3), endpoint.casts
    finally:
        stop(rpc_server)


def test_at_least_once_with_a_consumer_is_delivered(router, transports):
    transport = transports(router.url)
    endpoint = Calculator()
    rpc_server = start_server(transport, endpoint)
    try:
        time.sleep(0.3)
        client = oslo_messaging.get_rpc_client(
            transport, oslo_messaging.Target(topic="calc"), timeout=TIMEOUT,
            transport_options=AT_LEAST_ONCE)
        assert client.call({}, "add", a=4, b=5) == 9
        client.cast({}, "record", value="kept")
        assert endpoint.cast_seen.wait(TIMEOUT)
        assert endpoint.casts == ["kept"]
    finally:
        stop(rpc_server)


def test_at_least_once_released_is_undeliverable(router, transports):
    # The router released the message (its consumer went away with it): no consumer
    # took it, so at_least_once reports it at once instead of resending.
    transport = transports(router.url)
    rpc_server = start_server(transport, Calculator())
    try:
        time.sleep(0.3)
        router.faults.set_outcome("openstack.org/om/rpc/anycast", "released")
        client = oslo_messaging.get_rpc_client(
            transport, oslo_messaging.Target(topic="calc"), timeout=TIMEOUT,
            transport_options=AT_LEAST_ONCE)
        with pytest.raises(oslo_messaging.MessageUndeliverable):
            client.call({}, "add", a=1, b=1)
        assert router.counters["released"] == 1
    finally:
        stop(rpc_server)


def test_without_at_least_once_no_credit_keeps_the_timeout_semantics(router, transports):
    # REFERENCE §3.7: the caller's timeout passing is a MessagingTimeout.
    transport = transports(router.url)
    client = oslo_messaging.get_rpc_client(
        transport, oslo_messaging.Target(topic="nobody-listens"), timeout=2)
    with pytest.raises(oslo_messaging.MessagingTimeout) as info:
        client.call({}, "add", a=1, b=2)
    assert not isinstance(info.value, oslo_messaging.MessageUndeliverable)


# ---- notification pools ---------------------------------------------------------

@pytest.mark.parametrize("batch", [False, True], ids=["single", "batch"])
def test_notification_pool_is_refused_with_the_reason(bus, transports, batch):
    transport = transports(bus.url, notification=True)
    targets = [oslo_messaging.Target(topic="notifications")]
    if batch:
        listener = oslo_messaging.get_batch_notification_listener(
            transport, targets, [Recorder()], executor="threading", pool="pool-a",
            batch_size=5, batch_timeout=1)
    else:
        listener = oslo_messaging.get_notification_listener(
            transport, targets, [Recorder()], executor="threading", pool="pool-a")
    with pytest.raises(fastamqp_driver.NotificationPoolsUnsupported) as info:
        listener.start()
    text = str(info.value)
    # Without notification_pools (tests/driver/test_pools.py has them on).
    assert "pool-a" in text and "notification_pools = true" in text
    # oslo's driver API asks for NotImplementedError when pools are unsupported.
    assert isinstance(info.value, NotImplementedError)
    # Nothing was subscribed.
    assert bus.counters["links_total"] == 0


def test_listeners_without_a_pool_compete(transports):
    with Intermediary(mode="broker") as broker:
        transport = transports(broker.url, notification=True)
        recorders = [Recorder(), Recorder()]
        listeners = [oslo_messaging.get_notification_listener(
            transport, [oslo_messaging.Target(topic="notifications")], [r],
            executor="threading") for r in recorders]
        for listener in listeners:
            listener.start()
        try:
            notifier = oslo_messaging.Notifier(transport, publisher_id="p",
                                               driver="messagingv2",
                                               topics=["notifications"])
            for n in range(20):
                notifier.info({}, "e", {"n": n})
            deadline = time.monotonic() + TIMEOUT
            while time.monotonic() < deadline and sum(
                    len(r.events) for r in recorders) < 20:
                time.sleep(0.05)
            time.sleep(0.3)  # a duplicate would show up now
            seen = recorders[0].events + recorders[1].events
            assert sorted(seen) == list(range(20))       # each once, none twice
            assert all(r.events for r in recorders)      # both took a share
        finally:
            for listener in listeners:
                listener.stop()
                listener.wait()


def test_notification_listener_honours_target_exchange(broker, conf, transports):
    # REFERENCE §3.9 #3: the original discarded a listener's Target.exchange (it always
    # listened in its own control_exchange); fastamqp honours it, so this listener
    # hears what is sent to "nova" and not what is sent to the default "openstack".
    default = transports(broker.url, notification=True)
    conf.set_override("control_exchange", "nova")
    nova = transports(broker.url, notification=True)
    recorder = Recorder()
    listener = oslo_messaging.get_notification_listener(
        default, [oslo_messaging.Target(topic="notifications", exchange="nova")],
        [recorder], executor="threading")
    listener.start()
    try:
        for transport, n in ((default, 1), (nova, 2)):
            oslo_messaging.Notifier(transport, publisher_id="p", driver="messagingv2",
                                    topics=["notifications"]).info({}, "e", {"n": n})
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline and not recorder.events:
            time.sleep(0.05)
        time.sleep(0.3)
        assert recorder.events == [2]
        stored = broker.counters["addresses"]["unicast.openstack.notifications.info"]
        assert stored["stored"] == 1          # kept for a listener of "openstack"
    finally:
        listener.stop()
        listener.wait()
