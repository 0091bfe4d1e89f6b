"""Notification pools (``notification_pools = true``) through the embedded intermediary
in broker mode, which shares subscriptions as qpidd does (a receiver on a topic with
the ``shared`` source capability consumes from the one queue named by its link name).

The oslo contract: every consumer group -- each pool, and the listeners without a pool
as one more group -- gets every notification once, and the members of a group share
them. Both connection engines, both address syntaxes a broker can be given.
RabbitMQ's form of the same is in tests/test_rabbitmq.py.
"""
import time

import oslo_messaging
import pytest
from oslo_config import cfg

import fastamqp.engine
from fastamqp import opts
from fastamqp.intermediary import Intermediary
from engines import ENGINES
from oslo_env import transport_factory
from test_driver import Recorder

TIMEOUT = 10
EXCHANGE = "openstack"


@pytest.fixture(params=ENGINES)
def engine_impl(request, monkeypatch):
    monkeypatch.setattr(fastamqp.engine, "Connection", request.param)
    return request.param


@pytest.fixture(params=["legacy", "routable"])
def conf(request):
    cfg.CONF.reset()
    opts.register_opts(cfg.CONF)
    cfg.CONF.set_override("notification_pools", True, group=opts.GROUP)
    cfg.CONF.set_override("addressing_mode", request.param, group=opts.GROUP)
    yield cfg.CONF
    cfg.CONF.reset()
    cfg.CONF.clear_override("notification_pools", group=opts.GROUP)
    cfg.CONF.clear_override("addressing_mode", group=opts.GROUP)


@pytest.fixture
def broker():
    with Intermediary(mode="broker") as im:
        yield im


@pytest.fixture
def transports(conf):
    yield from transport_factory(conf)


def listen(transport, recorder, pool=None, topic="notifications"):
    listener = oslo_messaging.get_notification_listener(
        transport, [oslo_messaging.Target(topic=topic)], [recorder],
        executor="threading", pool=pool)
    listener.start()
    return listener


def stop_all(listeners):
    for listener in listeners:
        listener.stop()
        listener.wait()


def wait_for_groups(broker, expected):
    """Until the broker has these shared subscriptions with these member counts."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        groups = broker.counters["shared_subscriptions"]
        if {name: g["consumers"] for name, g in groups.items()} == expected:
            return groups
        time.sleep(0.05)
    raise AssertionError(f"shared subscriptions {broker.counters['shared_subscriptions']}"
                         f", expected consumers {expected}")


def notify(transport, numbers, topic="notifications"):
    notifier = oslo_messaging.Notifier(transport, publisher_id="compute.host1",
                                       driver="messagingv2", topics=[topic])
    for n in numbers:
        notifier.info({}, "compute.instance.create.end", {"n": n})


def wait_total(recorders, total):
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline and sum(len(r.events) for r in recorders) < total:
        time.sleep(0.05)
    time.sleep(0.3)          # a duplicate would show up now


def topic_address(conf):
    if conf.oslo_messaging_amqp.addressing_mode == "legacy":
        return f"broadcast.{EXCHANGE}.notifications.info.all"
    return f"openstack.org/om/notify/multicast/{EXCHANGE}/notifications.info"


def check_groups(transport, wait_attached):
    """Two members without a pool, two in pool-a, one in pool-b: every group gets
    each of 40 notifications once, and every member a share of its group's.
    ``wait_attached(topic_groups)`` returns once the five links are attached."""
    groups = {None: [Recorder(), Recorder()], "pool-a": [Recorder(), Recorder()],
              "pool-b": [Recorder()]}
    # The second member of a group in one transport gets a connection of its own
    # (a link name is unique per connection): 5 listeners, 3 + 2 connections.
    listeners = [listen(transport, r, pool)
                 for pool, members in groups.items() for r in members]
    try:
        wait_attached({"#": 2, "#pool-a": 2, "#pool-b": 1})
        notify(transport, range(40))
        wait_total([r for members in groups.values() for r in members], 3 * 40)
        for pool, members in groups.items():
            seen = [n for r in members for n in r.events]
            assert sorted(seen) == list(range(40)), pool    # each once, none twice
            assert all(r.events for r in members), pool      # every member a share
    finally:
        stop_all(listeners)


def test_each_group_gets_every_notification_and_its_members_share_them(
        engine_impl, conf, broker, transports):
    transport = transports(broker.url, notification=True)
    topic = topic_address(conf)
    check_groups(transport, lambda groups: wait_for_groups(
        broker, {topic + suffix: n for suffix, n in groups.items()}))
    # The notifier sent each notification once, to the topic.
    assert broker.counters["addresses"][topic]["received"] == 40


def test_a_group_keeps_what_arrives_while_it_has_no_member(engine_impl, conf, broker,
                                                           transports):
    transport = transports(broker.url, notification=True)
    topic = topic_address(conf)
    first = Recorder()
    listener = listen(transport, first, "pool-a")
    wait_for_groups(broker, {f"{topic}#pool-a": 1})
    stop_all([listener])
    # The group's queue outlives its members (the source never expires).
    wait_for_groups(broker, {f"{topic}#pool-a": 0})
    notify(transport, range(5))
    deadline = time.monotonic() + TIMEOUT
    while broker.counters["shared_subscriptions"][f"{topic}#pool-a"]["stored"] < 5:
        assert time.monotonic() < deadline, broker.counters["shared_subscriptions"]
        time.sleep(0.05)
    later = Recorder()
    listener = listen(transport, later, "pool-a")
    try:
        wait_total([later], 5)
        assert first.events == [] and sorted(later.events) == list(range(5))
    finally:
        stop_all([listener])


def test_pools_are_separate_per_topic_and_exchange(engine_impl, conf, broker, transports):
    transport = transports(broker.url, notification=True)
    a, b = Recorder(), Recorder()
    listeners = [listen(transport, a, "pool-a", topic="alpha"),
                 listen(transport, b, "pool-a", topic="beta")]
    try:
        topic = topic_address(conf)
        wait_for_groups(broker, {
            f"{topic.replace('notifications', 'alpha')}#pool-a": 1,
            f"{topic.replace('notifications', 'beta')}#pool-a": 1})
        notify(transport, range(3), topic="alpha")
        notify(transport, range(10, 12), topic="beta")
        wait_total([a, b], 5)
        assert sorted(a.events) == [0, 1, 2] and sorted(b.events) == [10, 11]
    finally:
        stop_all(listeners)


def test_a_stopped_member_frees_its_link_name_for_the_next(engine_impl, conf, broker,
                                                           transports):
    # After a listener stops, the next member of its group uses the transport's own
    # connection again rather than opening another.
    transport = transports(broker.url, notification=True)
    listener = listen(transport, Recorder(), "pool-a")
    wait_for_groups(broker, {f"{topic_address(conf)}#pool-a": 1})
    stop_all([listener])
    before = broker.counters["connections"]
    r = Recorder()
    listener = listen(transport, r, "pool-a")
    try:
        notify(transport, [7])
        wait_total([r], 1)
        assert r.events == [7]
        assert broker.counters["connections"] == before
    finally:
        stop_all([listener])
