"""RabbitMQ 4 over native AMQP 1.0: oslo.messaging's public API end to end through
real RabbitMQ 4.0.5 nodes (Debian 13's package, run from a chroot:
tests/support/rabbit.py, scripts/rabbitmq4-chroot), with the queues fastamqp declares
itself through the broker's management node (fastamqp.addressing.rabbitmq).

One node serves most of the session, with the v1 addresses denied
(``deprecated_features.permit.amqp_address_v1 = false``): fastamqp must not need them.
Failover, restart and cluster tests start nodes of their own; the 3-node cluster test
is marked ``rabbitmq_cluster``.

Each behavioural test runs on both engines (``[python]``, ``[c]``).

The shared fixtures (conf, transports, topic; the engine is the ``engine`` fixture of
tests/conftest.py) and helpers come from tests/support/rabbitmq_checks.py, with
test_rabbitmq.py's, so the 3.x and 4.x tests are the same tests where they can be.
"""
import json
import os
import re
import threading
import time
import uuid

import oslo_messaging
import pytest

from fastamqp.addressing import rabbitmq
from fastamqp.addressing import AddressingConfig, choose_addresser

from support import rabbit
from support.engines import ENGINE_TESTS_DONE
from support.rabbitmq_checks import (  # noqa: F401 (fixtures)
    Calculator, NotificationEndpoint, T, TIMEOUT, conf, each_group_gets_every_notification,
    heartbeats_keep_a_slow_call_alive, listener_for,
    notifications_are_stored_and_listeners_compete, rpc_patterns, start_server, stop,
    topic, transports, wait_for_consumers, wait_until)

RABBIT4 = {"product": "RabbitMQ", "version": "4.0.5"}
CONFIG = AddressingConfig(default_exchange="openstack")
V1_DENIED = "deprecated_features.permit.amqp_address_v1 = false"
TTL = 2        # rabbit_transient_queues_ttl for the tests that watch queues expire


def chroot_or_skip():
    why = rabbit.chroot4_missing()
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"{why}; CI machines must have it", pytest=False)
        pytest.skip(why)


@pytest.fixture(scope="session")
def rabbit4(tmp_path_factory):
    chroot_or_skip()
    node = rabbit.RabbitNode(None, root=rabbit.CHROOT4, config=V1_DENIED)
    node.start()
    try:
        yield node
    finally:
        node.remove()


def a4():
    return choose_addresser(CONFIG, RABBIT4)


def server_queue_names(topic, server):
    own, _, shared = a4().server_queues(T(topic=topic, server=server), "x")
    return own.name, shared.name


def fanout_queues(node, topic):
    multicast = f"openstack.org/om/rpc/multicast/openstack/{topic}/"
    return {n: q for n, q in node.queues().items() if n.startswith(multicast)}


def reply_queues(node):
    return {n: q for n, q in node.queues().items()
            if n.startswith(rabbitmq.REPLY_QUEUE_PREFIX)}


# ---- the node ----------------------------------------------------------------------

def test_node_is_rabbitmq_4_with_v1_addresses_denied(rabbit4):
    from proton.utils import BlockingConnection
    from fastamqp.engine.pure.connection import Connection
    from fastamqp.engine.interface import ConnectionSettings, Host
    assert rabbit4.startup_seconds < 30
    conn = Connection([Host("127.0.0.1", rabbit4.port, "guest", "guest")],
                      ConnectionSettings(container_id=f"probe-{uuid.uuid4().hex}"))
    conn.start()
    try:
        info = conn.wait_active(TIMEOUT)
        assert rabbitmq.is_rabbitmq(info.properties) and rabbitmq.uses_v2(info.properties)
        assert info.properties["version"].startswith("4.")
    finally:
        conn.close(5)
    # The operator's setting really is in force: a v1 address is refused (by ending
    # the session, which the blocking client sees only as a link that never opens).
    blocking = BlockingConnection(f"amqp://127.0.0.1:{rabbit4.port}", timeout=3,
                                  user="guest", password="guest", allowed_mechs="PLAIN")
    try:
        with pytest.raises(Exception):
            blocking.create_sender("/queue/fastamqp-v1-probe")
    finally:
        try:
            blocking.close()
        except Exception:
            pass
    assert wait_until(lambda: "amqp_address_v1_not_permitted" in rabbit4.log_text())


# ---- oslo.messaging through RabbitMQ 4 ----------------------------------------------

def test_rpc_patterns(rabbit4, engine, transports, topic):
    # listen() declared and bound the queues before returning: nothing to wait for.
    rpc_patterns(rabbit4.url(), transports, topic)


def test_queues_fastamqp_declares(rabbit4, engine, transports, topic):
    url = rabbit4.url() + f"?rabbit_transient_queues_ttl={TTL}"
    rpc_server = start_server(transports(url), Calculator(), topic, "host1")
    replies_before = set(reply_queues(rabbit4))
    client_transport = transports(url)
    client = oslo_messaging.get_rpc_client(
        client_transport, oslo_messaging.Target(topic=topic), timeout=TIMEOUT)
    try:
        assert client.call({}, "add", a=1, b=2) == 3
        queues = rabbit4.queues()
        own, shared = server_queue_names(topic, "host1")
        for name in (own, shared):       # shared: durable classic, no expiry
            assert queues[name]["durable"] and not queues[name]["auto_delete"]
            assert "x-expires" not in queues[name]["arguments"]
        [(fanout, q)] = fanout_queues(rabbit4, topic).items()
        assert q["auto_delete"] and q["arguments"]["x-expires"] == TTL * 1000
        replies = set(reply_queues(rabbit4)) - replies_before
        assert replies and all(reply_queues(rabbit4)[r]["auto_delete"] for r in replies)
        # Replies are consumed settled: no acknowledgement per call.
        consumers = json.loads(rabbit4.ctl("list_consumers", "-q", "--formatter", "json",
                                           "queue_name", "ack_required"))
        assert [c["ack_required"] for c in consumers
                if c["queue_name"] in replies] == [False]
        bindings = rabbit4.bindings()
        assert ("amq.direct", shared, shared) in bindings
        assert ("amq.direct", own, own) in bindings
        assert ("amq.direct", fanout,
                f"openstack.org/om/rpc/multicast/openstack/{topic}") in bindings
    finally:
        stop(rpc_server)
        client_transport.cleanup()
    # A stopped server's fanout queue and a closed client's reply queue go away.
    assert wait_until(lambda: fanout not in rabbit4.queues(), timeout=TTL + 10)
    assert wait_until(lambda: not replies & set(rabbit4.queues()), timeout=TTL + 10)


def test_fanout_reaches_every_server_and_anycast_reaches_one(rabbit4, engine,
                                                             transports, topic):
    url = rabbit4.url()
    endpoints = [Calculator() for _ in range(3)]
    servers = [start_server(transports(url), e, topic, f"host{i}")
               for i, e in enumerate(endpoints)]
    try:
        assert wait_until(lambda: sum(q["consumers"] for q in
                                      fanout_queues(rabbit4, topic).values()) == 3)
        client = oslo_messaging.get_rpc_client(
            transports(url), oslo_messaging.Target(topic=topic), timeout=TIMEOUT)
        client.prepare(fanout=True).cast({}, "record", value="everyone")
        assert all(e.wait_for(1) for e in endpoints)
        for n in range(30):
            client.cast({}, "record", value=n)
        assert wait_until(lambda: sum(len(e.casts) for e in endpoints) == 33)
        time.sleep(0.3)
        got = sorted(v for e in endpoints for v in e.casts if v != "everyone")
        assert got == list(range(30))                       # each cast once
        assert all(e.casts[0] == "everyone" for e in endpoints)
    finally:
        stop(*servers)


def test_call_to_a_topic_nobody_serves_fails_within_its_timeout(
        rabbit4, engine, transports, topic):
    # No server ever listened: no queue is bound for the key, and amq.direct answers
    # released; sent again while the deadline allows, then a failure that says so.
    client = oslo_messaging.get_rpc_client(
        transports(rabbit4.url()), oslo_messaging.Target(topic=topic), timeout=2)
    started = time.monotonic()
    with pytest.raises((oslo_messaging.MessagingTimeout,
                        oslo_messaging.MessageDeliveryFailure),
                       match="released|timed out|no reply"):
        client.call({}, "add", a=1, b=2)
    assert time.monotonic() - started < 6


def test_a_stopped_server_s_queue_keeps_requests(rabbit4, engine, transports,
                                                 topic):
    # Once a server has listened, its topic's queue exists (shared queues do not
    # expire): a cast sent while no server runs waits there for the next one.
    url = rabbit4.url()
    stop(start_server(transports(url), Calculator(), topic, "host1"))
    client = oslo_messaging.get_rpc_client(
        transports(url), oslo_messaging.Target(topic=topic), timeout=TIMEOUT)
    client.cast({}, "record", value="kept")
    # Kept in memory, as the rabbit driver's (non-persistent) messages: the header
    # says durable = false, which RabbitMQ 4.0 needs explicitly (else to disk).
    _, queue = server_queue_names(topic, "host1")
    deadline = time.monotonic() + 5
    while rabbit4.queues()[queue]["messages"] < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert rabbit4.queues()[queue]["messages"] == 1
    assert rabbit4.queues()[queue]["messages_persistent"] == 0
    endpoint = Calculator()
    rpc_server = start_server(transports(url), endpoint, topic, "host1")
    try:
        assert endpoint.wait_for(1) and endpoint.casts == ["kept"]
    finally:
        stop(rpc_server)


def test_at_least_once_reports_no_server_at_once(rabbit4, engine, transports,
                                                 topic):
    # amq.direct answers released when no queue is bound for the key: what the
    # rabbit driver's mandatory flag reports.
    client = oslo_messaging.get_rpc_client(
        transports(rabbit4.url()), oslo_messaging.Target(topic=topic), timeout=20,
        transport_options=oslo_messaging.TransportOptions(at_least_once=True))
    started = time.monotonic()
    with pytest.raises(oslo_messaging.MessageUndeliverable):
        client.call({}, "add", a=1, b=2)
    assert time.monotonic() - started < 5


def test_call_monitor_heartbeats_keep_a_slow_call_alive(rabbit4, engine,
                                                        transports, topic):
    # RabbitMQ 4.0 ends the session of a body-less message: heartbeats carry an
    # empty data section there.
    heartbeats_keep_a_slow_call_alive(rabbit4.url(), transports, topic)


def test_notifications_are_stored_and_listeners_compete(rabbit4, engine,
                                                        transports, topic):
    # 4.x: the notifier declared the topic's queue before its first notification.
    [queue] = a4().notification_queues([T(topic=f"{topic}.info")])
    notifications_are_stored_and_listeners_compete(rabbit4, rabbit4.url(), transports,
                                                   topic, queue.name)


def test_pools_each_group_gets_every_notification(rabbit4, engine, transports,
                                                  topic):
    each_group_gets_every_notification(
        rabbit4, rabbit4.url() + "?notification_pools=true", transports, topic,
        lambda pool: a4().group_queue(T(topic=f"{topic}.info"), pool).name)


def test_quorum_queues_option(rabbit4, engine, transports, topic):
    url = rabbit4.url() + "?rabbit_quorum_queue=true"
    endpoint = Calculator()
    rpc_server = start_server(transports(url), endpoint, topic, "host1")
    events = NotificationEndpoint()
    listener = listener_for(transports(url, notification=True), topic, events)
    try:
        client = oslo_messaging.get_rpc_client(
            transports(url), oslo_messaging.Target(topic=topic), timeout=TIMEOUT)
        assert client.call({}, "add", a=1, b=2) == 3
        oslo_messaging.Notifier(transports(url, notification=True), publisher_id="p",
                                driver="messagingv2", topics=[topic]).info(
            {}, "e", {"n": 7})
        assert events.wait_for(1)
        queues = rabbit4.queues()
        [notify] = a4().notification_queues([T(topic=f"{topic}.info")])
        for name in (*server_queue_names(topic, "host1"), notify.name):
            assert queues[name]["arguments"]["x-queue-type"] == "quorum", name
        # A classic queue of the same name cannot be made quorum: the error says so.
        classic = oslo_messaging.get_rpc_server(
            transports(rabbit4.url()),
            oslo_messaging.Target(topic=topic, server="host1"), [Calculator()],
            executor="threading")
        with pytest.raises(oslo_messaging.MessagingException,
                           match="(?s)refused PUT /queues/.*409.*x-queue-type"):
            classic.start()
    finally:
        stop(rpc_server)
        listener.stop()
        listener.wait()


@pytest.fixture
def limited_user(rabbit4):
    """A user who may write and read everywhere but configure (declare) nothing."""
    user = f"limited-{uuid.uuid4().hex[:6]}"
    rabbit4.ctl("add_user", user, "secret")
    rabbit4.ctl("set_permissions", "-p", "/", user, "^$", ".*", ".*")
    yield user
    rabbit4.ctl("delete_user", user, check=False)


def test_a_missing_permission_is_named(rabbit4, engine, transports, topic,
                                       limited_user):
    # RabbitMQ allows the login from loopback for users other than guest.
    url = rabbit4.url(user=limited_user, password="secret")
    server = oslo_messaging.get_rpc_server(
        transports(url), oslo_messaging.Target(topic=topic, server="host1"),
        [Calculator()], executor="threading")
    with pytest.raises(oslo_messaging.MessagingException,
                       match="(?s)refused PUT /queues/.*(403|unauthorized).*configure"):
        server.start()
    notifier = oslo_messaging.Notifier(transports(url, notification=True),
                                       publisher_id="p", driver="messagingv2",
                                       topics=[topic], retry=0)
    # oslo's Notifier logs a failed notification instead of raising; the driver's
    # error is what it logs.
    driver = notifier.transport._driver
    with pytest.raises(oslo_messaging.MessageDeliveryFailure,
                       match="(?s)refused PUT /queues/.*(403|unauthorized).*configure"):
        driver.send_notification(oslo_messaging.Target(topic=f"{topic}.info"), {},
                                 {"event_type": "e", "payload": {}}, 2.0)
    # A client cannot even get its reply queue: the call names the refusal.
    client = oslo_messaging.get_rpc_client(
        transports(url), oslo_messaging.Target(topic=topic), timeout=5)
    with pytest.raises(oslo_messaging.MessagingException, match="unauthorized-access"):
        client.call({}, "add", a=1, b=2)


def test_fastamqp_check(rabbit4, engine):
    import io
    from fastamqp.tools import check
    out, err = io.StringIO(), io.StringIO()
    code = check.main([rabbit4.url(), "--timeout", "10"], out=out, err=err)
    text = out.getvalue()
    assert code == check.EXIT_OK, text + err.getvalue()
    assert "RabbitMQ 4.0.5" in text and "rabbitmq" in text
    assert "/exchanges/amq.direct/" in text                  # v2, through amq.direct
    assert re.search(r"declared +queue fastamqp-reply\.", text), text
    assert "round trip" in text and text.rstrip().endswith("OK")


def test_fastamqp_check_names_a_refused_declaration(rabbit4, engine, limited_user):
    import io
    from fastamqp.tools import check
    out, err = io.StringIO(), io.StringIO()
    code = check.main([rabbit4.url(user=limited_user, password="secret"),
                       "--timeout", "10"], out=out, err=err)
    text = out.getvalue() + err.getvalue()
    assert code == check.EXIT_REJECTED, text
    assert "RabbitMQ refused a declaration" in text
    assert re.search(r"NOT declared +queue fastamqp-reply\..*unauthorized-access", text)
    assert "configure access to queue" in text and "set_permissions" in text


# ---- failover, restarts, a cluster ------------------------------------------------------

def url_of(*nodes, query=""):
    hosts = ",".join(f"guest:guest@127.0.0.1:{n.port}" for n in nodes)
    return f"amqp://{hosts}/" + (f"?{query}" if query else "")


@pytest.fixture(scope="module")
def node_pair():
    """Two separate RabbitMQ 4 nodes (not a cluster): one up, the other made but
    stopped."""
    chroot_or_skip()
    up = rabbit.RabbitNode(None, root=rabbit.CHROOT4, config=V1_DENIED)
    down = rabbit.RabbitNode(None, root=rabbit.CHROOT4, config=V1_DENIED)
    up.start()
    try:
        yield [up, down]
    finally:
        up.remove()
        down.remove()


def test_failover_to_another_node_declares_everything_there(engine, node_pair,
                                                            transports, topic):
    """Every client on node X (the only one up); Y starts, X stops: servers, callers
    and notifiers move to Y, where nothing was declared before, and work there."""
    x, y = (n for n in node_pair if n.process is not None and n.process.poll() is None), \
        None
    x = next(x)
    y = next(n for n in node_pair if n is not x)
    url = url_of(x, y, query="connection_retry_interval=1&"
                             "connection_retry_interval_max=1")
    endpoint = Calculator()
    rpc_server = start_server(transports(url), endpoint, topic, "host1")
    events = NotificationEndpoint()
    listener = listener_for(transports(url, notification=True), topic, events)
    client = oslo_messaging.get_rpc_client(
        transports(url), oslo_messaging.Target(topic=topic), timeout=5)
    notifier = oslo_messaging.Notifier(transports(url, notification=True),
                                       publisher_id="p", driver="messagingv2",
                                       topics=[topic])
    try:
        assert client.call({}, "add", a=1, b=1) == 2
        notifier.info({}, "e", {"n": 0})
        assert events.wait_for(1)
        y.start()
        x.stop()

        def works():
            try:
                return client.call({}, "add", a=2, b=2) == 4
            except oslo_messaging.MessagingException:
                return False
        assert wait_until(works, timeout=60, interval=0.5)
        # On Y now: the server's queues, fanout included, and the notification queue.
        queues = y.queues()
        assert set(server_queue_names(topic, "host1")) <= set(queues)
        assert fanout_queues(y, topic)
        assert client.prepare(server="host1").call({}, "add", a=3, b=3) == 6
        client.prepare(fanout=True).cast({}, "record", value="fanout on y")
        assert endpoint.wait_for(1) and endpoint.casts == ["fanout on y"]
        notifier.info({}, "e", {"n": 1})
        assert events.wait_for(2) and events.received == [0, 1]
    finally:
        stop(rpc_server)
        listener.stop()
        listener.wait()


def cast_load(client, threads, per_thread, pause=0.002):
    """Casts value (thread, i) from ``threads`` threads; the failures."""
    failures = []

    def run(t):
        for i in range(per_thread):
            try:
                client.cast({}, "record", value=[t, i])
            except Exception as exc:
                failures.append(f"{t}/{i}: {exc}")
            time.sleep(pause)
    workers = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    return workers, failures


def assert_no_cast_lost(sent, received, client):
    """Every cast in ``sent`` is in ``received()``. Pre-settled casts (the default on
    this branch) in flight when a node dies can be lost: then the test is an expected
    failure naming the confirmed-delivery change, which makes casts unsettled by
    default; once it is in, the assertion holds by itself."""
    whole = wait_until(lambda: sent <= received(), timeout=30)
    lost = len(sent - received())
    if not whole and "rpc-cast" in client.transport._driver.pre_settled:
        pytest.xfail(f"confirmed delivery: {lost} of {len(sent)} pre-settled casts lost "
                     f"(casts are pre-settled by default until the confirmed-delivery "
                     f"change)")
    assert whole, f"lost {lost} of {len(sent)} casts"


def test_node_restarted_under_load_loses_no_cast(engine, node_pair, transports,
                                                 topic):
    node = next(n for n in node_pair if n.process is not None
                and n.process.poll() is None)
    url = url_of(node, query="connection_retry_interval=1&"
                             "connection_retry_interval_max=1")
    endpoint = Calculator()
    rpc_server = start_server(transports(url), endpoint, topic, "host1")
    client = oslo_messaging.get_rpc_client(
        transports(url), oslo_messaging.Target(topic=topic), timeout=60)
    threads, per_thread = 4, 300
    try:
        workers, failures = cast_load(client, threads, per_thread)
        time.sleep(0.5)
        node.stop()
        node.start()
        for w in workers:
            w.join(120)
        assert not failures, failures[:5]
        expected = {(t, i) for t in range(threads) for i in range(per_thread)}
        assert_no_cast_lost(expected, lambda: {tuple(v) for v in endpoint.casts},
                            client)
    finally:
        stop(rpc_server)


CLUSTER_SECONDS = float(os.environ.get("FASTAMQP_RABBITMQ_CLUSTER_SECONDS", "20"))


@pytest.fixture(scope="module")
def cluster():
    """Three RabbitMQ 4 nodes in one cluster on loopback (one epmd, one cookie)."""
    if ENGINE_TESTS_DONE:
        pytest.skip("FASTAMQP_ENGINE_TESTS_DONE=1: the cluster test ran in the C install")
    chroot_or_skip()
    first = rabbit.RabbitNode(None, root=rabbit.CHROOT4, config=V1_DENIED)
    nodes = [first]
    try:
        first.start()
        for _ in range(2):
            node = rabbit.RabbitNode(None, root=rabbit.CHROOT4, config=V1_DENIED,
                                     cluster_with=first)
            nodes.append(node)
            node.start()
        yield nodes
    finally:
        for node in reversed(nodes):
            node.stop(keep_epmd=node is not first)
            node.remove()


@pytest.mark.rabbitmq_cluster
def test_cluster_node_killed_under_load(cluster, transports, topic):
    """Quorum queues on a 3-node cluster; one node SIGKILLed under load: no cast or
    notification lost, every call returns or raises within its deadline, and the
    clients move to a live node of the URL. The C engine (the default); the load
    lasts FASTAMQP_RABBITMQ_CLUSTER_SECONDS (20; docs/rabbitmq.md has a longer run)."""
    url = url_of(*cluster, query="rabbit_quorum_queue=true&"
                                 "connection_retry_interval=1&"
                                 "connection_retry_interval_max=1")
    endpoints = [Calculator() for _ in range(2)]
    servers = [start_server(transports(url), e, topic, f"host{i}")
               for i, e in enumerate(endpoints)]
    events = NotificationEndpoint()
    listener = listener_for(transports(url, notification=True), topic, events)
    clients = [oslo_messaging.get_rpc_client(
        transports(url), oslo_messaging.Target(topic=topic), timeout=10)
        for _ in range(3)]
    notifier = oslo_messaging.Notifier(transports(url, notification=True),
                                       publisher_id="p", driver="messagingv2",
                                       topics=[topic])
    stop_at = time.monotonic() + CLUSTER_SECONDS
    sent_casts, sent_notes, late_calls, failed_calls, errors = [], [], [], [], []

    def caster(c, client):
        i = 0
        while time.monotonic() < stop_at:
            try:
                client.cast({}, "record", value=[c, i])
                sent_casts.append((c, i))
            except Exception as exc:
                errors.append(f"cast {c}/{i}: {exc}")
            i += 1
            time.sleep(0.01)

    def caller(client):
        while time.monotonic() < stop_at:
            started = time.monotonic()
            try:
                assert client.call({}, "add", a=1, b=2) == 3
            except oslo_messaging.MessagingException as exc:
                failed_calls.append(str(exc))
            took = time.monotonic() - started
            if took > 10 + 2:                      # the deadline, and some slack
                late_calls.append(took)

    def noter():
        n = 0
        while time.monotonic() < stop_at:
            try:
                notifier.info({}, "e", {"n": n})
                sent_notes.append(n)
            except Exception as exc:
                errors.append(f"notification {n}: {exc}")
            n += 1
            time.sleep(0.01)
    try:
        workers = [threading.Thread(target=caster, args=(0, clients[0])),
                   threading.Thread(target=caster, args=(1, clients[2])),
                   threading.Thread(target=caller, args=(clients[1],)),
                   threading.Thread(target=noter)]
        for w in workers:
            w.start()
        time.sleep(CLUSTER_SECONDS / 3)
        victim = cluster[1]
        victim.kill()
        for w in workers:
            w.join(CLUSTER_SECONDS + 120)
        # Every client is connected to a live node of the URL.
        live = {cluster[0].port, cluster[2].port}
        for client in clients:
            conn = client.transport._driver.connection()
            assert conn.wait_active(30).host.port in live
        assert wait_until(lambda: set(sent_notes) <= set(events.received), timeout=60), (
            f"lost {len(set(sent_notes) - set(events.received))} of {len(sent_notes)} "
            f"notifications")
        assert not late_calls, late_calls
        assert not errors, errors[:5]
        assert len(failed_calls) < 20, failed_calls[:5]   # only around the kill
        assert_no_cast_lost(set(sent_casts),
                            lambda: {tuple(v) for e in endpoints for v in e.casts},
                            clients[0])
    finally:
        stop(*servers)
        listener.stop()
        listener.wait()
