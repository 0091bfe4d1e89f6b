"""What the RabbitMQ 3 and 4 tests share (tests/interop/test_rabbitmq.py and
test_rabbitmq4.py), so that they are the same tests where they can be: the oslo
fixtures (conf, transports, topic; the engine is the ``engine`` fixture of
tests/conftest.py), endpoints, and whole checks that take the node's URL."""
import threading
import time
import uuid

import oslo_messaging
import pytest
from oslo_config import cfg

from support.oslo_env import transport_factory

TIMEOUT = 15


class T:
    """A duck-typed oslo Target."""

    def __init__(self, topic="compute", exchange=None, server=None, fanout=False):
        self.topic, self.exchange = topic, exchange
        self.server, self.fanout = server, fanout


@pytest.fixture
def conf():
    cfg.CONF.reset()
    yield cfg.CONF
    cfg.CONF.reset()


@pytest.fixture
def transports(conf):
    yield from transport_factory(conf)


@pytest.fixture
def topic():
    return f"calc-{uuid.uuid4().hex[:8]}"


class Calculator:
    def __init__(self):
        self.casts = []
        self.cond = threading.Condition()

    def add(self, ctxt, a, b):
        return a + b

    def fail(self, ctxt):
        raise ValueError("the server says no")

    def context_echo(self, ctxt):
        return ctxt

    def record(self, ctxt, value):
        with self.cond:
            self.casts.append(value)
            self.cond.notify_all()

    def slow(self, ctxt, seconds):
        time.sleep(seconds)
        return "done"

    def wait_for(self, count, timeout=TIMEOUT):
        with self.cond:
            return self.cond.wait_for(lambda: len(self.casts) >= count, timeout)


def start_server(transport, endpoint, topic, server):
    rpc_server = oslo_messaging.get_rpc_server(
        transport, oslo_messaging.Target(topic=topic, server=server), [endpoint],
        executor="threading")
    rpc_server.start()
    return rpc_server


def stop(*servers):
    for server in servers:
        server.stop()
    for server in servers:
        server.wait()


def wait_until(predicate, timeout=TIMEOUT, interval=0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


def wait_for_consumers(node, names, count=1):
    """Until each queue has ``count`` consumers: a server's links are attached."""
    return wait_until(lambda: all(node.queues().get(n, {}).get("consumers", 0) >= count
                                  for n in names))


def rpc_patterns(url, transports, topic, ready=lambda: True):
    """Call, direct call, cast, fanout, direct cast, a remote error and the context
    through one server; ``ready()`` says when its links are attached."""
    endpoint = Calculator()
    rpc_server = start_server(transports(url), endpoint, topic, "host1")
    try:
        assert ready()
        client = oslo_messaging.get_rpc_client(
            transports(url), oslo_messaging.Target(topic=topic), timeout=TIMEOUT)
        assert client.call({}, "add", a=2, b=3) == 5                       # anycast
        assert client.prepare(server="host1").call({}, "add", a=1, b=1) == 2   # direct
        client.cast({}, "record", value="cast")                             # cast
        assert endpoint.wait_for(1)
        client.prepare(fanout=True).cast({}, "record", value="fanout")      # fanout
        assert endpoint.wait_for(2)
        client.prepare(server="host1").cast({}, "record", value="direct")   # direct cast
        assert endpoint.wait_for(3)
        assert endpoint.casts == ["cast", "fanout", "direct"]
        with pytest.raises(ValueError, match="the server says no"):
            client.call({}, "fail")
        ctxt = {"user": "u1", "traceparent": "00-0af7651916cd43dd8448eb211c80319c-"
                                             "b7ad6b7169203331-01"}
        assert client.call(ctxt, "context_echo") == ctxt
    finally:
        stop(rpc_server)


def heartbeats_keep_a_slow_call_alive(url, transports, topic):
    rpc_server = start_server(transports(url), Calculator(), topic, "host1")
    try:
        client = oslo_messaging.get_rpc_client(
            transports(url), oslo_messaging.Target(topic=topic), timeout=TIMEOUT,
            call_monitor_timeout=2)
        # 3 s of work with a 2 s monitor: only heartbeats keep the call alive.
        assert client.call({}, "slow", seconds=3) == "done"
    finally:
        stop(rpc_server)


class NotificationEndpoint:
    def __init__(self):
        self.received = []
        self.cond = threading.Condition()

    def info(self, ctxt, publisher_id, event_type, payload, metadata):
        with self.cond:
            self.received.append(payload["n"])
            self.cond.notify_all()

    def wait_for(self, count, timeout=TIMEOUT):
        with self.cond:
            return self.cond.wait_for(lambda: len(self.received) >= count, timeout)


def listener_for(transport, topic, endpoint, pool=None):
    listener = oslo_messaging.get_notification_listener(
        transport, [oslo_messaging.Target(topic=topic)], [endpoint],
        executor="threading", pool=pool)
    listener.start()
    return listener


def notifications_are_stored_and_listeners_compete(node, url, transports, topic,
                                                   queue):
    """A notification sent before any listener is kept in the topic's ``queue``; two
    listeners then share the topic's notifications, each once. RabbitMQ 3.x and 4.x."""
    notifier = oslo_messaging.Notifier(transports(url, notification=True),
                                       publisher_id="compute.host1",
                                       driver="messagingv2", topics=[topic])
    notifier.info({}, "compute.instance.create.end", {"n": 0})
    one, two = NotificationEndpoint(), NotificationEndpoint()
    listeners = [listener_for(transports(url, notification=True), topic, one),
                 listener_for(transports(url, notification=True), topic, two)]
    try:
        assert wait_for_consumers(node, [queue], count=2)
        for n in range(1, 11):
            notifier.info({}, "compute.instance.create.end", {"n": n})
        assert wait_until(lambda: len(one.received) + len(two.received) >= 11)
        time.sleep(0.5)
        assert sorted(one.received + two.received) == list(range(11))   # once each
        assert one.received and two.received                           # both took some
    finally:
        for listener in listeners:
            listener.stop()
            listener.wait()


def each_group_gets_every_notification(node, url, transports, topic, group_queue,
                                       check_queues=None):
    """Three groups (none, billing, audit) listen to one topic's notifications: each
    gets every one, shared among its members. ``group_queue(pool)`` names a group's
    queue; the group without a pool also has the one sent before anybody listened
    (the notifier declared its queue, as the rabbit driver declares its default one).
    RabbitMQ 3.x and 4.x alike."""
    notifier = oslo_messaging.Notifier(transports(url, notification=True),
                                       publisher_id="compute.host1",
                                       driver="messagingv2", topics=[topic])
    notifier.info({}, "compute.instance.create.end", {"n": 0})
    groups = {None: [NotificationEndpoint(), NotificationEndpoint()],
              "billing": [NotificationEndpoint(), NotificationEndpoint()],
              "audit": [NotificationEndpoint()]}
    listeners = [listener_for(transports(url, notification=True), topic, e, pool)
                 for pool, members in groups.items() for e in members]
    try:
        queues = {pool: group_queue(pool) for pool in groups}
        for pool, members in groups.items():
            assert wait_for_consumers(node, [queues[pool]], count=len(members))
        if check_queues is not None:
            check_queues(queues)
        for n in range(1, 21):
            notifier.info({}, "compute.instance.create.end", {"n": n})
        everyone = [e for members in groups.values() for e in members]
        assert wait_until(lambda: sum(len(e.received) for e in everyone) >= 20 * 3 + 1)
        time.sleep(0.5)
        for pool, members in groups.items():
            seen = sorted(n for e in members for n in e.received)
            assert seen == list(range(0 if pool is None else 1, 21)), pool
            assert all(e.received for e in members), pool
    finally:
        for listener in listeners:
            listener.stop()
            listener.wait()
