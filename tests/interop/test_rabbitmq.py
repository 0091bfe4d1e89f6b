"""RabbitMQ over AMQP 1.0: the addresses (fastamqp.addressing.rabbitmq), and oslo.messaging's
public API end to end through a real RabbitMQ 3.x node with the rabbitmq_amqp1_0 plugin.

One private node serves the whole session (tests/support/rabbit.py; about 4 s to
start). It
gets the expiry policy docs/rabbitmq.md asks operators for, with a short period, so the
tests can see reply and fanout queues go away after their clients. Every test uses
topics of its own: queues outlive tests on a shared node.

The behavioural tests run on each connection engine (the ``engine`` fixture,
tests/conftest.py): the pure-Python one (``[python]``) and the C one (``[c]``,
fastamqp.engine.c.connection).

oslo.messaging 18.3's tracing options live on the global cfg.CONF (a private
ConfigOpts fails on send), so the tests use cfg.CONF and reset it afterwards.
"""
import dataclasses
import os
import re
import threading
import time
import uuid

import oslo_messaging
import pytest
from oslo_config import cfg

from fastamqp import addressing, exceptions
from fastamqp.addressing import rabbitmq
from fastamqp.rabbitmq import declare
from fastamqp.addressing import AddressingConfig, choose_addresser
from fastamqp.engine.interface import Host, PeerInfo
from support import certs, rabbit
from support.rabbitmq_checks import (  # noqa: F401 (fixtures)
    Calculator, NotificationEndpoint, T, TIMEOUT, conf, each_group_gets_every_notification,
    heartbeats_keep_a_slow_call_alive, listener_for,
    notifications_are_stored_and_listeners_compete, rpc_patterns, start_server, stop,
    topic, transports, wait_for_consumers, wait_until)

POLICY_EXPIRES_MS = 1000

RABBIT3 = {"product": "RabbitMQ", "version": "3.10.8"}
RABBIT4 = {"product": "RabbitMQ", "version": "4.1.2"}
CONFIG = AddressingConfig(default_exchange="openstack")


def peer(properties):
    return PeerInfo(Host(), "c", properties)


# ---- addresses (no node needed) ----------------------------------------------------

@pytest.mark.parametrize("mode, properties, syntax, version", [
    ("dynamic", RABBIT3, "rabbitmq", 1),
    ("dynamic", {"product": "RabbitMQ"}, "rabbitmq", 1),          # no version: 3.x form
    ("dynamic", RABBIT4, "rabbitmq", 2),
    ("dynamic", {"product": "rabbitmq", "version": "4.0.0-beta.1"}, "rabbitmq", 2),
    ("rabbitmq", {}, "rabbitmq", 1),                              # forced, no product
    ("rabbitmq", {"product": "qpid-dispatch-router"}, "rabbitmq", 1),
    ("legacy", RABBIT3, "legacy", None),                          # an explicit mode wins
    ("routable", RABBIT3, "routable", None),
    ("dynamic", {"product": "qpid-cpp"}, "legacy", None),
    ("dynamic", {"product": "qpid-dispatch-router"}, "routable", None),
])
def test_rabbitmq_is_chosen_from_the_peer_or_the_mode(mode, properties, syntax, version):
    config = AddressingConfig(mode=mode, default_exchange="openstack")
    addresser = choose_addresser(config, properties)
    assert addresser.syntax == syntax
    if version is not None:
        assert addresser.version == version


def test_v1_addresses_for_rabbitmq_3():
    a = choose_addresser(CONFIG, RABBIT3)
    assert a.resolve(T()) == (
        "/queue/openstack.org%2Fom%2Frpc%2Fanycast%2Fopenstack%2Fcompute")
    assert a.resolve(T(server="host1")) == (
        "/queue/openstack.org%2Fom%2Frpc%2Funicast%2Fopenstack%2Fcompute%2Fhost1")
    assert a.resolve(T(fanout=True)) == (
        "/exchange/amq.direct/openstack.org%2Fom%2Frpc%2Fmulticast%2Fopenstack%2Fcompute")
    assert a.resolve(T(topic="notifications.info"), addressing.SERVICE_NOTIFY) == (
        "/queue/openstack.org%2Fom%2Fnotify%2Fanycast%2Fopenstack%2Fnotifications.info")
    assert a.resolve(T(exchange="nova", server="h")) == (
        "/queue/openstack.org%2Fom%2Frpc%2Funicast%2Fnova%2Fcompute%2Fh")
    # An RPC server consumes its own queue, a private queue bound for fanout (the same
    # exchange address: the plugin makes one queue per link) and the shared queue.
    assert a.server_addresses(T(server="host1")) == [
        a.resolve(T(server="host1")), a.resolve(T(fanout=True)), a.resolve(T())]


def test_v1_addresses_follow_the_routable_options_and_the_vhost():
    config = AddressingConfig(default_exchange="ctl", rpc_address_prefix="my/rpc",
                              notify_address_prefix="my/notify", multicast_address="all",
                              unicast_address="one", anycast_address="any",
                              default_rpc_exchange="rx",
                              default_notification_exchange="nx")
    a = choose_addresser(config, RABBIT3, vhost="vh1")
    assert a.resolve(T()) == "/queue/my%2Frpc%2Fany%2Fvh1%2Frx%2Fcompute"
    assert a.resolve(T(server="h")) == "/queue/my%2Frpc%2Fone%2Fvh1%2Frx%2Fcompute%2Fh"
    assert a.resolve(T(fanout=True)) == (
        "/exchange/amq.direct/my%2Frpc%2Fall%2Fvh1%2Frx%2Fcompute")
    assert a.resolve(T(topic="n.info"), addressing.SERVICE_NOTIFY) == (
        "/queue/my%2Fnotify%2Fany%2Fvh1%2Fnx%2Fn.info")


def test_v2_addresses_for_rabbitmq_4_send_through_amq_direct():
    # Every target is amq.direct (a missing queue would end the sender's session);
    # every queue is bound there with its own name.
    a = choose_addresser(CONFIG, RABBIT4)
    assert a.resolve(T()) == (
        "/exchanges/amq.direct/openstack.org%2Fom%2Frpc%2Fanycast%2Fopenstack%2Fcompute")
    assert a.resolve(T(fanout=True)) == (
        "/exchanges/amq.direct/"
        "openstack.org%2Fom%2Frpc%2Fmulticast%2Fopenstack%2Fcompute")
    assert a.resolve(T(topic="a b+c?é", server="h#1")) == (
        "/exchanges/amq.direct/openstack.org%2Fom%2Frpc%2Funicast%2Fopenstack%2F"
        "a%20b%2Bc%3F%C3%A9%2Fh%231")
    assert a.resolve(T(topic="n.info"), addressing.SERVICE_NOTIFY) == (
        "/exchanges/amq.direct/openstack.org%2Fom%2Fnotify%2Fanycast%2Fopenstack%2F"
        "n.info")
    assert rabbitmq.v2_exchange("my ex", "k/1") == "/exchanges/my%20ex/k%2F1"


def test_v2_server_queues_are_declared_and_bound():
    a = choose_addresser(CONFIG, RABBIT4)
    anycast = "openstack.org/om/rpc/anycast/openstack/compute"
    unicast = "openstack.org/om/rpc/unicast/openstack/compute/host1"
    multicast = "openstack.org/om/rpc/multicast/openstack/compute"
    own, fanout, shared = a.server_queues(T(server="host1"), "tok")
    assert own == rabbitmq.QueueSpec(unicast, bindings=(("amq.direct", unicast),))
    assert fanout == rabbitmq.QueueSpec(f"{multicast}/host1.tok", transient=True,
                                        bindings=(("amq.direct", multicast),))
    assert shared == rabbitmq.QueueSpec(anycast, bindings=(("amq.direct", anycast),))
    # v2 sources must be queues: fanout arrives on a queue per server and connection.
    assert a.server_addresses(T(server="host1"), token="tok") == [
        rabbitmq.v2_queue(q.name) for q in (own, fanout, shared)]
    # Notifications: a shared queue per topic; pools: a queue per group.
    [notify] = a.notification_queues([T(topic="n.info")])
    assert notify.name == "openstack.org/om/notify/anycast/openstack/n.info"
    assert notify.bindings == (("amq.direct", notify.name),)
    assert a.notification_source(T(topic="n.info")) == rabbitmq.v2_queue(notify.name)
    [group] = a.notification_queues([T(topic="n.info")], "billing", pools=True)
    assert group.name == "openstack.org/om/notify/multicast/openstack/n.info#billing"
    assert group.bindings == (
        ("amq.direct", "openstack.org/om/notify/multicast/openstack/n.info"),)
    # 3.x declares nothing for RPC (the plugin does), only pool groups (0-9-1).
    v1 = choose_addresser(CONFIG, RABBIT3)
    assert v1.server_queues(T(server="host1"), "tok") == []
    assert v1.notification_queues([T(topic="n.info")]) == []
    assert v1.notification_queues([T(topic="n.info")], None, pools=True)


def test_queue_options_follow_the_rabbit_driver_options():
    shared, transient = rabbitmq.QueueSpec("q"), rabbitmq.QueueSpec("r", transient=True)
    classic = rabbitmq.QueueOptions()
    assert classic.declaration(shared) == {
        "durable": True, "exclusive": False, "auto_delete": False,
        "arguments": {"x-queue-type": "classic"}}
    quorum = rabbitmq.QueueOptions(quorum=True, transient_ttl=60)
    assert quorum.declaration(shared)["arguments"] == {"x-queue-type": "quorum"}
    assert quorum.declaration(transient) == {
        "durable": True, "exclusive": False, "auto_delete": True,
        "arguments": {"x-queue-type": "classic", "x-expires": 60000}}


def test_queue_plan_names_a_connection_s_own_queues_per_peer():
    plan = declare.QueuePlan(lambda addresser, token: [token])
    first, second = peer(RABBIT4), peer(RABBIT4)
    assert plan.specs(first, None) == plan.specs(first, None)     # stable per peer
    assert plan.specs(second, None) != plan.specs(first, None)    # new per connection


def test_reply_source():
    source = declare.ReplySource(CONFIG)
    address = source(peer(RABBIT3))
    assert address.startswith("/queue/" + rabbitmq.REPLY_QUEUE_PREFIX)
    assert len(address) > len("/queue/" + rabbitmq.REPLY_QUEUE_PREFIX) + 30
    assert source(peer(RABBIT3)) == address             # the same queue after a reconnect
    assert declare.ReplySource(CONFIG)(peer(RABBIT3)) != address   # one per connection
    assert source(peer({"product": "qpid-dispatch-router"})) is None   # dynamic source
    assert source(peer({})) is None
    # 4.x: a declared queue, a new one per connection, replied to through amq.direct.
    four = peer(RABBIT4)
    reply = source(four)
    [spec] = source.specs(four)
    assert reply == rabbitmq.v2_queue(spec.name) and spec.transient
    assert spec.name.startswith(source.queue) and spec.bindings == (
        ("amq.direct", spec.name),)
    assert source(four) == reply and source(peer(RABBIT4)) != reply
    assert choose_addresser(CONFIG, RABBIT4).reply_to(reply) == (
        "/exchanges/amq.direct/" + reply[len("/queues/"):])
    assert source.specs(peer(RABBIT3)) == []
    forced = declare.ReplySource(AddressingConfig(mode="rabbitmq"))
    assert forced(peer({})).startswith("/queue/fastamqp-reply.")
    # Even with another explicit mode a RabbitMQ 3.x peer cannot give a dynamic source.
    assert declare.ReplySource(AddressingConfig(mode="legacy"))(peer(RABBIT3))
    assert re.match(rabbitmq.TRANSIENT_QUEUE_PATTERN, address[len("/queue/"):])
    assert re.match(rabbitmq.TRANSIENT_QUEUE_PATTERN, "amq.gen-Du5KMO2jGlPxQbGAzosRow")
    assert not re.match(rabbitmq.TRANSIENT_QUEUE_PATTERN,
                        "openstack.org/om/rpc/anycast/openstack/compute")


def test_addressing_mode_option_accepts_rabbitmq():
    from fastamqp import opts
    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    conf([], project="fastamqp-test")
    conf.set_override("addressing_mode", "rabbitmq", group=opts.GROUP)
    assert conf.oslo_messaging_amqp.addressing_mode == "rabbitmq"
    config = AddressingConfig.from_conf(conf.oslo_messaging_amqp, "openstack")
    assert choose_addresser(config, {"product": "qpid-cpp"}).syntax == "rabbitmq"


# ---- the node ----------------------------------------------------------------------

@pytest.fixture(scope="session")
def rabbit_node(tmp_path_factory):
    why = rabbit.installed()
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"{why}; CI machines must have it", pytrace=False)
        pytest.skip(why)
    # A TLS listener as well, with the test PKI's server certificate (127.0.0.1).
    pki = certs.make_pki(tmp_path_factory.mktemp("rabbit-pki")) if certs.have_openssl() \
        else None
    node = rabbit.RabbitNode(tmp_path_factory.mktemp("rabbitmq"),
                             tls=(pki.ca, *pki.server) if pki else None)
    node.pki = pki
    node.start()
    try:
        # What docs/rabbitmq.md asks of operators, with a short period for the tests.
        node.ctl("set_policy", "--apply-to", "queues", "fastamqp-transient",
                 rabbitmq.TRANSIENT_QUEUE_PATTERN, f'{{"expires": {POLICY_EXPIRES_MS}}}')
        yield node
    finally:
        node.stop()


def queue_name(address):
    assert address.startswith("/queue/")
    return address[len("/queue/"):].replace("%2F", "/")


def names(topic, server=None):
    a = choose_addresser(CONFIG, RABBIT3)
    found = [queue_name(a.resolve(T(topic=topic)))]
    if server:
        found.append(queue_name(a.resolve(T(topic=topic, server=server))))
    return found


# ---- oslo.messaging through RabbitMQ ------------------------------------------------

def test_node_starts_quickly_and_speaks_amqp_1_0(rabbit_node):
    # Keeps the tier's CI time small; the node is shared by the whole session.
    assert rabbit_node.startup_seconds < 30
    from fastamqp.engine.pure.connection import Connection
    from fastamqp.engine.interface import ConnectionSettings
    conn = Connection([Host("127.0.0.1", rabbit_node.port, "guest", "guest")],
                      ConnectionSettings(container_id=f"probe-{uuid.uuid4().hex}",
                                         sasl_mechanisms="PLAIN"))
    conn.start()
    try:
        info = conn.wait_active(TIMEOUT)
        assert rabbitmq.is_rabbitmq(info.properties)
        assert rabbitmq.major_version(info.properties) == 3
    finally:
        conn.close(5)


def test_rpc_patterns(rabbit_node, engine, transports, topic):
    # 3.x: the fanout queue exists once the server's link is attached.
    rpc_patterns(rabbit_node.url(), transports, topic,
                 lambda: wait_for_consumers(rabbit_node, names(topic, "host1")))


def test_fanout_reaches_every_server_and_anycast_reaches_one(rabbit_node, engine,
                                                             transports, topic):
    url = rabbit_node.url()
    one, two = Calculator(), Calculator()
    fanout_before = {n for n, q in rabbit_node.queues().items() if q["consumers"]}
    servers = [start_server(transports(url), one, topic, "host1"),
               start_server(transports(url), two, topic, "host2")]
    try:
        anycast, host1 = names(topic, "host1")
        host2 = names(topic, "host2")[1]

        def attached():
            queues = rabbit_node.queues()
            # Each server's private fanout queue too (their only consumer is it).
            fanout = [n for n in queues if n.startswith("amq.gen-")
                      and queues[n]["consumers"] and n not in fanout_before]
            return (queues.get(anycast, {}).get("consumers") == 2
                    and queues.get(host1, {}).get("consumers") == 1
                    and queues.get(host2, {}).get("consumers") == 1 and len(fanout) >= 2)
        assert wait_until(attached)
        client = oslo_messaging.get_rpc_client(
            transports(url), oslo_messaging.Target(topic=topic), timeout=TIMEOUT)
        client.prepare(fanout=True).cast({}, "record", value="everyone")
        assert one.wait_for(1) and two.wait_for(1)
        assert one.casts == ["everyone"] and two.casts == ["everyone"]
        # Anycast: the two servers compete for one shared queue; each message is
        # handled exactly once.
        for i in range(10):
            client.cast({}, "record", value=i)
        assert wait_until(lambda: len(one.casts) + len(two.casts) >= 12)
        time.sleep(0.5)
        got = sorted(one.casts[1:] + two.casts[1:])
        assert got == list(range(10))
        assert one.casts[1:] and two.casts[1:]      # both took a share
        # Direct: only the named server.
        client.prepare(server="host2").cast({}, "record", value="only-2")
        assert two.wait_for(len(two.casts) + 1)
        assert "only-2" in two.casts and "only-2" not in one.casts
    finally:
        stop(*servers)


def test_reply_queue_is_per_connection_and_goes_away_after_its_client(
        rabbit_node, engine, conf, topic):
    url = rabbit_node.url()
    server_transport = oslo_messaging.get_rpc_transport(conf, url=url)
    rpc_server = start_server(server_transport, Calculator(), topic, "host1")
    clients = [oslo_messaging.get_rpc_transport(conf, url=url) for _ in range(2)]
    try:
        assert wait_for_consumers(rabbit_node, names(topic, "host1"))
        for transport in clients:
            client = oslo_messaging.get_rpc_client(
                transport, oslo_messaging.Target(topic=topic), timeout=TIMEOUT)
            assert client.call({}, "add", a=1, b=2) == 3
        replies = [queue_name(t._driver.connection().reply_address(
            time.monotonic() + TIMEOUT)) for t in clients]
        assert len(set(replies)) == 2
        queues = rabbit_node.queues()
        for name in replies:
            assert name.startswith(rabbitmq.REPLY_QUEUE_PREFIX)
            assert queues[name]["consumers"] == 1
            assert queues[name]["policy"] == "fastamqp-transient"
        fanout_queues = [n for n, q in queues.items()
                         if n.startswith("amq.gen-") and q["consumers"]]
        assert fanout_queues
    finally:
        for transport in clients:
            transport.cleanup()
    # The clients are gone: their reply queues expire (the operator's policy).
    assert wait_until(lambda: not set(replies) & set(rabbit_node.queues()),
                      timeout=POLICY_EXPIRES_MS / 1000 + 10)
    stop(rpc_server)
    server_transport.cleanup()
    # The stopped server's private fanout queue goes the same way.
    assert wait_until(lambda: not set(fanout_queues) & set(rabbit_node.queues()),
                      timeout=POLICY_EXPIRES_MS / 1000 + 10)


def test_call_monitor_heartbeats_keep_a_slow_call_alive(rabbit_node, engine,
                                                        transports, topic):
    heartbeats_keep_a_slow_call_alive(rabbit_node.url(), transports, topic)


def test_call_timeout_without_a_server(rabbit_node, engine, transports, topic):
    client = oslo_messaging.get_rpc_client(
        transports(rabbit_node.url()), oslo_messaging.Target(topic=topic), timeout=2)
    started = time.monotonic()
    with pytest.raises(oslo_messaging.MessagingTimeout):
        client.call({}, "add", a=1, b=2)
    assert time.monotonic() - started < 6


def test_a_call_that_timed_out_is_not_run_later(rabbit_node, engine, transports,
                                               topic):
    # The request carries its timeout as the header ttl, which RabbitMQ 3.x honours:
    # a server that starts after the caller gave up never runs the stale request.
    url = rabbit_node.url()
    client = oslo_messaging.get_rpc_client(
        transports(url), oslo_messaging.Target(topic=topic), timeout=1)
    # No server yet: the caller's link declares the shared queue, which keeps the
    # request until its ttl runs out.
    with pytest.raises(oslo_messaging.MessagingTimeout):
        client.call({}, "record", value="stale")
    time.sleep(1)
    endpoint = Calculator()
    rpc_server = start_server(transports(url), endpoint, topic, "host1")
    try:
        client.prepare(timeout=TIMEOUT).cast({}, "record", value="fresh")
        assert endpoint.wait_for(1)
        time.sleep(0.3)
        assert endpoint.casts == ["fresh"]
    finally:
        stop(rpc_server)


def test_notifications_are_stored_and_listeners_compete(rabbit_node, engine,
                                                        transports, topic):
    # 3.x: the notifier's /queue/ link declares the shared queue.
    notifications_are_stored_and_listeners_compete(
        rabbit_node, rabbit_node.url(), transports, topic,
        queue_name(choose_addresser(CONFIG, RABBIT3).resolve(
            T(topic=f"{topic}.info"), addressing.SERVICE_NOTIFY)))


def pools_url(node):
    return node.url() + "?notification_pools=true"


def test_pools_each_group_gets_every_notification(rabbit_node, engine, transports,
                                                   topic):
    a = choose_addresser(CONFIG, RABBIT3)

    def bound(queues):
        # Each group is a queue of its own, bound to amq.direct with the topic name.
        assert queues[None].endswith("#") and queues["billing"].endswith("#billing")
        bindings = rabbit_node.ctl("list_bindings", "-q", "source_name",
                                   "destination_name", "routing_key")
        for queue in queues.values():
            assert f"amq.direct\t{queue}\t{queue.rsplit('#', 1)[0]}" in bindings
    each_group_gets_every_notification(
        rabbit_node, pools_url(rabbit_node), transports, topic,
        lambda pool: a.group_binding(T(topic=f"{topic}.info"), pool).queue, bound)


def test_a_pool_queue_keeps_notifications_while_its_listeners_are_away(
        rabbit_node, engine, transports, topic):
    url = pools_url(rabbit_node)
    first = NotificationEndpoint()
    listener = listener_for(transports(url, notification=True), topic, first, "billing")
    queue = choose_addresser(CONFIG, RABBIT3).group_binding(
        T(topic=f"{topic}.info"), "billing").queue
    assert wait_for_consumers(rabbit_node, [queue])
    listener.stop()
    listener.wait()
    notifier = oslo_messaging.Notifier(transports(url, notification=True),
                                       publisher_id="p", driver="messagingv2",
                                       topics=[topic])
    for n in range(3):
        notifier.info({}, "e", {"n": n})
    assert wait_until(lambda: rabbit_node.queues().get(queue, {}).get("messages") == 3)
    later = NotificationEndpoint()
    listener = listener_for(transports(url, notification=True), topic, later, "billing")
    try:
        assert later.wait_for(3)
        assert first.received == [] and sorted(later.received) == [0, 1, 2]
    finally:
        listener.stop()
        listener.wait()


def test_a_pool_without_the_option_is_refused(rabbit_node, engine, transports,
                                              topic):
    transport = transports(rabbit_node.url(), notification=True)
    with pytest.raises(NotImplementedError, match="notification_pools"):
        listener_for(transport, topic, NotificationEndpoint(), pool="billing")


def test_pool_declaration_failure_names_the_cause(rabbit_node, engine, transports,
                                                  topic):
    # The declaration goes over AMQP 0-9-1 with the URL's credentials; when it
    # cannot, the error names the queue and the cause.
    url = rabbit_node.url()
    transport = transports(url + "?notification_pools=true", notification=True)
    driver = transport._driver
    driver.connection().wait_active(TIMEOUT)
    peer = driver.connection().peer
    bad = dataclasses.replace(peer, host=dataclasses.replace(peer.host, port=1))
    declarer = driver._declarers[driver.connection()]
    plan = declare.QueuePlan(lambda addresser, token: addresser.notification_queues(
        [T(topic=f"{topic}.info")], None, pools=True))
    with pytest.raises(exceptions.DeclarationError, match="AMQP 0-9-1 failed") as info:
        declarer.ensure(bad, plan)
    assert "127.0.0.1:1" in str(info.value) and "#" in str(info.value)


def test_pool_declarations_run_on_no_engine_thread(rabbit_node, engine, transports,
                                                   topic, monkeypatch):
    # A blocking AMQP 0-9-1 connection must never run on an engine's I/O or event
    # thread: neither the listener's (every connection) nor the notifier's.
    threads = []
    original = declare.declare_groups

    def recording(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return original(*args, **kwargs)
    monkeypatch.setattr(declare, "declare_groups", recording)
    url = pools_url(rabbit_node)
    events = NotificationEndpoint()
    listener = listener_for(transports(url, notification=True), topic, events, "billing")
    try:
        oslo_messaging.Notifier(transports(url, notification=True), publisher_id="p",
                                driver="messagingv2", topics=[topic]).info(
            {}, "e", {"n": 1})
        assert events.wait_for(1)
    finally:
        listener.stop()
        listener.wait()
    assert threads
    assert not [t for t in threads if t.startswith(("fastamqp I/O", "fastamqp dispatcher"))]


def tls_url(node, **query):
    if node.pki is None:
        pytest.skip("no openssl to make the test certificates")
    query = "&".join(f"{k}={v}" for k, v in query.items())
    return node.url(tls=True) + "?ssl=true&" + query


def test_tls_rpc_and_pooled_notifications(rabbit_node, engine, transports, topic):
    # Verified TLS (the test CA, the server's 127.0.0.1 name) for the AMQP 1.0
    # connection, and for the AMQP 0-9-1 one that declares the pool queues.
    url = tls_url(rabbit_node, ssl_ca_file=rabbit_node.pki.ca, notification_pools="true")
    rpc_server = start_server(transports(url), Calculator(), topic, "host1")
    events = NotificationEndpoint()
    listener = listener_for(transports(url, notification=True), topic, events, "billing")
    try:
        client_transport = transports(url)
        client = oslo_messaging.get_rpc_client(
            client_transport, oslo_messaging.Target(topic=topic), timeout=TIMEOUT)
        assert client.call({}, "add", a=40, b=2) == 42
        peer = client_transport._driver.connection().peer
        assert peer.tls is not None and peer.tls.protocol
        queue = choose_addresser(CONFIG, RABBIT3).group_binding(
            T(topic=f"{topic}.info"), "billing").queue
        assert wait_for_consumers(rabbit_node, [queue])
        oslo_messaging.Notifier(transports(url, notification=True), publisher_id="p",
                                driver="messagingv2", topics=[topic]).info(
            {}, "e", {"n": 5})
        assert events.wait_for(1) and events.received == [5]
    finally:
        stop(rpc_server)
        listener.stop()
        listener.wait()


def test_tls_server_not_trusted_fails_naming_verification(rabbit_node, engine,
                                                          transports, topic):
    # No ssl_ca_file: the system CAs, which do not know the test CA.
    client = oslo_messaging.get_rpc_client(
        transports(tls_url(rabbit_node)), oslo_messaging.Target(topic=topic), timeout=5)
    with pytest.raises(oslo_messaging.MessagingException, match="did not verify|TLS"):
        client.call({}, "add", a=1, b=2)


def test_sasl_plain_with_guest(rabbit_node, engine, transports, topic):
    url = rabbit_node.url() + "?sasl_mechanisms=PLAIN"
    rpc_server = start_server(transports(url), Calculator(), topic, "host1")
    try:
        # No need to wait for the server's links: the queue keeps the request.
        client = oslo_messaging.get_rpc_client(
            transports(url), oslo_messaging.Target(topic=topic), timeout=TIMEOUT)
        assert client.call({}, "add", a=40, b=2) == 42
    finally:
        stop(rpc_server)


def test_no_credentials_log_in_as_the_plugins_default_user(rabbit_node, engine,
                                                          transports, topic):
    # ANONYMOUS: the 3.x plugin maps it to amqp1_0.default_user (guest by default).
    url = f"amqp://127.0.0.1:{rabbit_node.port}/"
    client = oslo_messaging.get_rpc_client(
        transports(url), oslo_messaging.Target(topic=topic), timeout=TIMEOUT)
    client.cast({}, "record", value="anonymous")
    queue = names(topic)[0]
    assert wait_until(lambda: rabbit_node.queues().get(queue, {}).get("messages") == 1)


def test_wrong_password_fails_quickly(rabbit_node, engine, transports, topic):
    client = oslo_messaging.get_rpc_client(
        transports(rabbit_node.url(password="wrong")), oslo_messaging.Target(topic=topic),
        timeout=30)
    started = time.monotonic()
    with pytest.raises(oslo_messaging.MessageDeliveryFailure,
                       match="(?i)authentication|credentials|unauthorized"):
        client.call({}, "add", a=1, b=2)
    assert time.monotonic() - started < 10


def test_hybrid_rpc_through_a_router_notifications_through_rabbitmq(
        rabbit_node, engine, transports, topic):
    """One service: RPC over the embedded router (as qdrouterd), notifications over
    RabbitMQ, each transport choosing its own addressing from its peer."""
    from fastamqp.intermediary import Intermediary
    with Intermediary(mode="router") as router:
        rpc_transport = transports(router.url)
        notify_transport = transports(rabbit_node.url(), notification=True)
        notifier = oslo_messaging.Notifier(notify_transport, publisher_id="svc.host1",
                                           driver="messagingv2", topics=[topic])
        events = NotificationEndpoint()

        class Service:
            def work(self, ctxt, n):
                notifier.info(ctxt, "svc.work.done", {"n": n})
                return n * 2

        rpc_server = start_server(rpc_transport, Service(), topic, "host1")
        listener = listener_for(notify_transport, topic, events)
        try:
            time.sleep(0.3)   # the server's links reach the router
            client = oslo_messaging.get_rpc_client(
                rpc_transport, oslo_messaging.Target(topic=topic), timeout=TIMEOUT)
            assert client.call({}, "work", n=21) == 42
            assert events.wait_for(1)
            assert events.received == [21]
            # Each transport picked the syntax of its own peer.
            assert rpc_transport._driver._addresser(
                rpc_transport._driver.connection().peer).syntax == "routable"
            assert notify_transport._driver._addresser(
                notify_transport._driver.connection().peer).syntax == "rabbitmq"
            # The RPC went through the router, not through RabbitMQ.
            assert not [n for n in rabbit_node.queues() if topic in n and "/rpc/" in n]
        finally:
            stop(rpc_server)
            listener.stop()
            listener.wait()
