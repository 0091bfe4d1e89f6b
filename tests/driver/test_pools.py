"""Notification pools (``notification_pools = true``) through the embedded intermediary
in broker mode, which shares subscriptions as qpidd does (a receiver on a topic with
the ``shared`` source capability consumes from the one queue named by its link name).

The oslo contract: every consumer group -- each pool, and the listeners without a pool
as one more group -- gets every notification once, and the members of a group share
them. Both connection engines, both address syntaxes a broker can be given.
RabbitMQ's form of the same is in tests/interop/test_rabbitmq.py.
"""
import time

import pytest
from oslo_config import cfg

from fastamqp import opts
from fastamqp.intermediary import Intermediary
from support.oslo_env import transport_factory
from support.oslo_checks import (Recorder, check_groups, listen, notify, stop_all,
                                 wait_total)

TIMEOUT = 10
EXCHANGE = "openstack"


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


def topic_address(conf):
    if conf.oslo_messaging_amqp.addressing_mode == "legacy":
        return f"broadcast.{EXCHANGE}.notifications.info.all"
    return f"openstack.org/om/notify/multicast/{EXCHANGE}/notifications.info"


def test_each_group_gets_every_notification_and_its_members_share_them(
        engine, conf, broker, transports):
    transport = transports(broker.url, notification=True)
    topic = topic_address(conf)
    check_groups(transport, lambda groups: wait_for_groups(
        broker, {topic + suffix: n for suffix, n in groups.items()}))
    # The notifier sent each notification once, to the topic.
    assert broker.counters["addresses"][topic]["received"] == 40


def test_a_group_keeps_what_arrives_while_it_has_no_member(engine, conf, broker,
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


def test_pools_are_separate_per_topic_and_exchange(engine, conf, broker, transports):
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


def test_a_stopped_member_frees_its_link_name_for_the_next(engine, conf, broker,
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
