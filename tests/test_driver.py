"""oslo.messaging 18 over fastamqp (``amqp://``) through the embedded intermediary:
RPC in router mode (as through qdrouterd) and in broker mode (qpidd), notifications
through the broker. These drive the public oslo.messaging API end to end.

oslo.messaging 18.3's tracing options live on the global cfg.CONF (a private
ConfigOpts fails on send), so the tests use cfg.CONF and reset it afterwards.
"""
import threading
import time

import oslo_messaging
import pytest
from oslo_config import cfg

from fastamqp import driver as fastamqp_driver
from fastamqp.intermediary import Intermediary

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


class Calculator:
    def __init__(self):
        self.casts = []
        self.cast_seen = threading.Event()

    def add(self, ctxt, a, b):
        return a + b

    def fail(self, ctxt):
        raise ValueError("the server says no")

    def context_echo(self, ctxt):
        return ctxt

    def record(self, ctxt, value):
        self.casts.append(value)
        self.cast_seen.set()

    def slow(self, ctxt, seconds):
        time.sleep(seconds)
        return "done"


@pytest.fixture
def transports(conf):
    made = []

    def make(url, notification=False):
        factory = (oslo_messaging.get_notification_transport if notification
                   else oslo_messaging.get_rpc_transport)
        transport = factory(conf, url=url)
        made.append(transport)
        return transport
    yield make
    for transport in made:
        transport.cleanup()


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
        transport = transports(broker.url, notification=True)
        received = []
        seen = threading.Event()

        class Endpoint:
            def info(self, ctxt, publisher_id, event_type, payload, metadata):
                received.append((publisher_id, event_type, payload))
                seen.set()

        # Sent before any listener exists: the broker stores it.
        notifier = oslo_messaging.Notifier(transport, publisher_id="compute.host1",
                                           driver="messagingv2", topics=["notifications"])
        notifier.info({}, "compute.instance.create.end", {"id": 1})
        listener = oslo_messaging.get_notification_listener(
            transport, [oslo_messaging.Target(topic="notifications")], [Endpoint()],
            executor="threading")
        listener.start()
        try:
            assert seen.wait(TIMEOUT)
            assert received == [("compute.host1", "compute.instance.create.end",
                                 {"id": 1})]
        finally:
            listener.stop()
            listener.wait()


def test_malformed_message_is_rejected_and_the_server_keeps_serving(transports):
    with Intermediary(mode="broker") as broker:
        transport = transports(broker.url)
        rpc_server = start_server(transport, Calculator())
        try:
            time.sleep(0.3)
            # A poison message straight onto the server's queue (legacy addressing).
            from fastamqp._pure.connection import Connection
            from fastamqp.interface import ConnectionSettings, Host
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
