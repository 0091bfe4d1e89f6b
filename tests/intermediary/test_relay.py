"""fastamqp relay (the intermediary's C data path) against independent clients.

Real AMQP on 127.0.0.1 ephemeral ports: raw python-qpid-proton blocking clients, and
oslo.messaging with the fastamqp driver. The Python intermediary's behavioural
checks that only use what the relay has too (tests/support/intermediary_checks.py) are
imported and run here against the relay, on the ``router``/``broker`` fixtures below.
The module is skipped when the relay extension is not built.
"""
import tempfile
import time

import pytest
from proton import Delivery, Message, Timeout, symbol
from proton.utils import BlockingConnection, SendException

from fastamqp.intermediary import relay as relay_mod, routing
from support.oslo_checks import (Calculator, check_groups,
                                 check_notification_stored_then_delivered)
from support.oslo_env import transport_factory

if not relay_mod.available():
    pytest.skip("the fastamqp relay (fastamqp.intermediary._relay) is not built",
                allow_module_level=True)

from fastamqp.intermediary.relay import Relay  # noqa: E402

# The same behavioural checks as the Python intermediary, run against the relay.
from support.intermediary_checks import (  # noqa: E402,F401
    ANYCAST, MULTICAST, SHORT, T, connect, drain, pump, rx, send_async, tx, until,
    vanish,
    test_broker_competing_consumers,
    test_broker_consumer_disconnect_requeues,
    test_broker_rejected_message_is_dropped,
    test_broker_released_message_is_redelivered,
    test_broker_store_and_forward,
    test_broker_topic_fans_out,
    check_congested_consumer_discards_presettled,
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
    r = Relay(mode="router").start()
    yield r
    r.stop()


@pytest.fixture
def broker():
    r = Relay(mode="broker").start()
    yield r
    r.stop()


# -- relay specifics --------------------------------------------------------------------

@pytest.mark.parametrize("mode,product", [("router", "qpid-dispatch-router"),
                                          ("broker", "qpid-cpp")])
def test_open_properties(mode, product, connect):
    with Relay(mode=mode) as r:
        assert r.port > 0 and r.url == "amqp://127.0.0.1:%d/" % r.port
        c = connect(r)
        props = c.conn.remote_properties
        assert props[symbol("product")] == product
        assert props[symbol("version")]
        assert c.conn.remote_container == "fastamqp-%s-fastamqp" % mode
        assert r.counters["connections"] == 1
        c.close()
        until(lambda: r.counters["connections"] == 0)
    assert not r.running


def test_router_anycast_two_consumers_on_two_connections(router, connect):
    c1, c2, p = connect(router), connect(router), connect(router)
    r1 = rx(c1, ANYCAST, credit=50)
    r2 = rx(c2, ANYCAST, credit=50)
    s = tx(p, ANYCAST)
    until(lambda: s.link.credit > 0, [p])
    sent = [send_async(s, i) for i in range(20)]
    got = []

    def take():
        for r in (r1, r2):
            while r.fetcher.has_message:
                got.append(r.receive(timeout=T).body)
                r.accept()
        return len(got) >= 20
    until(take, [c1, c2, p])
    assert sorted(got) == list(range(20))
    # the consumers' last dispositions go out when their connections run
    until(lambda: all(d.settled for d in sent), [c1, c2, p])
    assert all(d.remote_state == Delivery.ACCEPTED for d in sent)
    n = router.counters
    assert n["received"] == 20 and n["forwarded"] == 20 and n["accepted"] == 20


def test_router_no_consumer_no_credit_then_released(router, connect):
    c = connect(router)
    s = tx(c, "unicast.nobody")
    pump(c, 0.3)
    assert s.link.credit == 0
    r = rx(c, "unicast.nobody", credit=1)
    until(lambda: s.link.credit == routing.DEFAULT_WINDOW, [c])
    r.close()
    with pytest.raises(SendException) as e:
        s.send(Message(body="lost"), timeout=T)
    assert e.value.state == Delivery.RELEASED


def test_router_rejected_condition_is_relayed(router, connect):
    c = connect(router)
    r = rx(c, ANYCAST, credit=1)
    s = tx(c, ANYCAST)
    until(lambda: s.link.credit > 0, [c])
    d = send_async(s, "bad")
    assert r.receive(timeout=T).body == "bad"
    dlv = r.fetcher.unsettled[0]
    dlv.local.condition = __import__("proton").Condition("app:bad", "no thanks")
    r.settle(Delivery.REJECTED)
    c.wait(lambda: d.settled, timeout=T)
    assert d.remote_state == Delivery.REJECTED
    assert d.remote.condition.name == "app:bad"
    assert router.counters["rejected"] == 1


def test_router_large_message(router, connect):
    c = connect(router)
    r = rx(c, ANYCAST, credit=2)
    s = tx(c, ANYCAST)
    until(lambda: s.link.credit > 0, [c])
    body = "x" * (3 * 1024 * 1024)     # many frames
    d = send_async(s, body)
    assert r.receive(timeout=T).body == body
    r.accept()
    c.wait(lambda: d.settled, timeout=T)
    assert d.remote_state == Delivery.ACCEPTED


def test_router_presettled_without_consumer_is_dropped(router, connect):
    from proton.reactor import AtMostOnce
    c = connect(router)
    r = rx(c, ANYCAST, credit=5)
    s = tx(c, ANYCAST, options=AtMostOnce())
    until(lambda: s.link.credit > 0, [c])
    r.close()
    s.send(Message(body="gone"), timeout=T)
    until(lambda: router.counters["dropped"] == 1, [c])
    assert router.counters["dropped_presettled"] == 1


def test_router_link_capacity_is_configurable(connect):
    r = Relay(mode="router", window=20).start()
    try:
        check_congested_consumer_discards_presettled(r, connect, ANYCAST, 20)
    finally:
        r.stop()


# Addresses that exercise every rule of routing.AddressTable: each default prefix, a
# prefix followed by '.' or '/', a longer prefix beating a shorter one, a name that only
# starts like a prefix ("unicastfoo"), the amqp:/ form, and names no prefix covers.
ROUTING_PROBES = [
    "unicast", "unicast.x", "unicast/x", "unicastfoo", "exclusive.reply.1", "broadcast",
    "broadcast.nova.fanout", "amqp:/broadcast.x", "amqp://broadcast.x",
    "openstack.org/om/rpc/multicast/nova/compute", "openstack.org/om/rpc/unicast/h1",
    "openstack.org/om/rpc/anycast/nova", "openstack.org/om/rpc/anycastx",
    "openstack.org/om/notify/multicast/n", "openstack.org/om/notify/unicast/n",
    "openstack.org/om/notify/anycast/n", "openstack.org/om/rpc", "fan", "fan.out",
    "fan/out", "fanx", "fan.out.deep", "q.a", "t.b", "", "notifications.info",
]
ROUTING_CONFIGS = [
    ("router", {}),
    ("router", {"addresses": [("fan", "multicast"), ("fan.out", "closest"), ("", "balanced")],
                "default_distribution": "closest"}),
    ("router", {"addresses": [], "default_distribution": "multicast"}),
    ("broker", {}),
    ("broker", {"queue_patterns": ["q", "fan.out"], "topic_patterns": ["t", "fan"]}),
]


@pytest.mark.parametrize("mode,config", ROUTING_CONFIGS)
def test_relay_routes_as_routing_py(mode, config):
    # The relay has no copy of routing.py's tables: it is handed them at start. This
    # checks that its lookup (fa_relay.c) and routing.py's cores agree, address by
    # address, for the default tables and for tables given as Intermediary takes them.
    if mode == "router":
        core = routing.RouterCore(None, routing.Counters(), routing.FaultRules(),
                                  addresses=config.get("addresses"),
                                  default=config.get("default_distribution",
                                                     routing.BALANCED))
    else:
        core = routing.BrokerCore(None, routing.Counters(), routing.FaultRules(),
                                  queue_patterns=config.get("queue_patterns"),
                                  topic_patterns=config.get("topic_patterns"))
    with Relay(mode=mode, **config) as r:
        got = {a: r.distribution(a) for a in ROUTING_PROBES}
    want = {a: core.distribution(routing.normalize(a)) for a in ROUTING_PROBES}
    assert got == want


def test_relay_custom_table_is_routed(connect):
    # The same table through the wire: "fan" is multicast here (every consumer gets a
    # copy), anything else closest (one consumer does), as Intermediary would route it.
    config = {"addresses": [("fan", "multicast")], "default_distribution": "closest"}
    r = Relay(mode="router", **config).start()
    try:
        c = connect(r)
        for address, copies in (("fan.out", 2), ("other.x", 1)):
            rcvs = [rx(c, address, credit=10) for _ in range(2)]
            s = tx(c, address)
            until(lambda: s.link.credit > 0, [c])
            send_async(s, address)
            until(lambda: sum(len(x.fetcher.incoming) for x in rcvs) >= copies, [c])
            pump(c, SHORT)             # time for a copy too many to show
            assert [len(x.fetcher.incoming) for x in rcvs].count(1) == copies, address
    finally:
        r.stop()


def test_counter_names_are_routings():
    # The relay's cumulative counters are routing.COUNTER_NAMES, in fa_relay.h's order.
    from fastamqp.intermediary import _relay
    assert _relay.COUNTER_NAMES[:len(routing.COUNTER_NAMES)] == routing.COUNTER_NAMES


def test_router_dynamic_address_is_unique(router, connect):
    c = connect(router)
    a = rx(c, None, dynamic=True, credit=1).link.remote_source.address
    b = rx(c, None, dynamic=True, credit=1).link.remote_source.address
    assert a != b
    for addr in (a, b):
        assert addr.startswith("amqp:/_topo/0/fastamqp/temp.")
        assert len(addr) == len("amqp:/_topo/0/fastamqp/temp.") + 12


def test_broker_dynamic_temp_queue(broker, connect):
    c = connect(broker)
    r = rx(c, None, dynamic=True, credit=5)
    addr = r.link.remote_source.address
    assert addr and not addr.startswith("amqp:/_topo") and len(addr) == 36
    s = tx(c, addr)
    s.send(Message(body="to temp"), timeout=T)
    assert r.receive(timeout=T).body == "to temp"
    r.accept()


def test_broker_requeue_on_released(broker, connect):
    c = connect(broker)
    s = tx(c, "unicast.order")
    for i in range(3):
        s.send(Message(body=i), timeout=T)
    assert broker.counters["stored"] == 3
    r = rx(c, "unicast.order", credit=1)
    assert r.receive(timeout=T).body == 0
    r.release(delivered=False)
    # The receiver's prefetch already took 1 when 0 comes back to the queue's head.
    assert sorted(drain(r, 3)) == [0, 1, 2]
    until(lambda: broker.counters["acknowledged"] == 3, [c])
    n = broker.counters
    assert n["requeued"] == 1 and n["enqueued"] == 3 and n["stored"] == 0


def test_refuses_anonymous_relay_and_missing_source(router, connect):
    from proton.utils import LinkDetached
    c = connect(router)
    with pytest.raises(LinkDetached):
        c.create_sender(None, name="anon")
    with pytest.raises(Exception):
        c.create_receiver(None, name="nosource")
    # the connection still works
    r = rx(c, ANYCAST, credit=1)
    s = tx(c, ANYCAST)
    until(lambda: s.link.credit > 0, [c])


def test_stop_with_live_clients_and_restart(connect):
    r = Relay(mode="broker").start()
    port = r.port
    c = BlockingConnection(r.url, timeout=T)
    s = tx(c, "unicast.q")
    s.send(Message(body="kept until stop"), timeout=T)
    r.stop()
    assert r.counters["enqueued"] == 1
    r.start()
    try:
        assert r.port == port
        c2 = connect(r)
        rx(c2, "unicast.q", credit=1)
        pump(c2, 0.2)
        assert r.counters["stored"] == 0      # state does not survive a stop
    finally:
        r.stop()


# -- oslo.messaging through the relay ---------------------------------------------------

TIMEOUT = 10


@pytest.fixture
def transports(engine):
    """oslo transports on each connection engine in turn (the ``engine`` fixture)."""
    from oslo_config import cfg
    cfg.CONF.reset()
    yield from transport_factory(cfg.CONF)
    cfg.CONF.reset()


@pytest.mark.parametrize("mode", ["router", "broker"])
def test_oslo_rpc_call_cast_fanout(mode, transports):
    import oslo_messaging
    with Relay(mode=mode) as r:
        transport = transports(r.url)
        endpoint = Calculator()
        server = oslo_messaging.get_rpc_server(
            transport, oslo_messaging.Target(topic="calc", server="host1"), [endpoint],
            executor="threading")
        server.start()
        try:
            time.sleep(0.3)
            client = oslo_messaging.get_rpc_client(
                transport, oslo_messaging.Target(topic="calc"), timeout=TIMEOUT)
            assert client.call({}, "add", a=2, b=3) == 5
            assert client.prepare(server="host1").call({}, "add", a=1, b=1) == 2
            for i in range(50):
                assert client.call({}, "add", a=i, b=1) == i + 1
            client.cast({}, "record", value="cast")
            assert endpoint.cast_seen.wait(TIMEOUT)
            endpoint.cast_seen.clear()
            client.prepare(fanout=True).cast({}, "record", value="fanout")
            assert endpoint.cast_seen.wait(TIMEOUT)
            assert endpoint.casts == ["cast", "fanout"]
        finally:
            server.stop()
            server.wait()
        assert r.counters["forwarded"] > 100


def test_oslo_notifications_through_broker(transports):
    with Relay(mode="broker") as broker:
        check_notification_stored_then_delivered(transports, broker.url)


def test_oslo_notification_pools_through_broker(transports):
    # The relay shares subscriptions as BrokerCore does (tests/driver/test_pools.py).
    with Relay(mode="broker") as broker:
        transport = transports(broker.url + "?notification_pools=true",
                               notification=True)

        def wait_attached(groups):
            deadline = time.monotonic() + TIMEOUT
            while broker.counters["links"] < sum(groups.values()):
                assert time.monotonic() < deadline, broker.counters
                time.sleep(0.05)
            time.sleep(0.2)
        check_groups(transport, wait_attached)


def roundtrip(url, address, body):
    """One message from a new connection to itself through the relay at ``url``,
    received, accepted, and its outcome back at the sender."""
    c = BlockingConnection(url, timeout=T)
    try:
        r = rx(c, address, credit=1)
        s = tx(c, address)
        until(lambda: s.link.credit > 0, [c])
        d = send_async(s, body)
        assert r.receive(timeout=T).body == body
        r.accept()
        c.wait(lambda: d.settled, timeout=T)
    finally:
        c.close()


def _child_env():
    """The environment of a child that must import the fastamqp this process imported
    (the installed one in CI, whose relay is built; not the source tree's)."""
    import os
    here = os.path.dirname(os.path.dirname(os.path.abspath(relay_mod.__file__)))
    site = os.path.dirname(here)
    return dict(os.environ, PYTHONPATH=site + os.pathsep + os.environ.get("PYTHONPATH", ""))


# -- command line -----------------------------------------------------------------------

def test_cli_engine_c(tmp_path):
    import json
    import os
    import re
    import signal
    import subprocess
    import sys
    env = _child_env()
    p = subprocess.Popen([sys.executable, "-m", "fastamqp.intermediary", "--mode", "router",
                          "--engine", "c", "--listen", "127.0.0.1:0"],
                         stdout=subprocess.PIPE, text=True, env=env, cwd=str(tmp_path))
    try:
        banner = p.stdout.readline()
        # the banner benchmarks/e2e.py parses, as with the Python engine
        m = re.search(r"listening on amqp://127\.0\.0\.1:(\d+)$", banner.strip())
        assert m and "(router, product qpid-dispatch-router)" in banner, banner
        roundtrip("amqp://127.0.0.1:%s" % m.group(1), ANYCAST, "via cli")
    finally:
        p.send_signal(signal.SIGTERM)
        out, _ = p.communicate(timeout=20)
    counters = json.loads(out[out.index("{"):])
    assert p.returncode == 0 and counters["forwarded"] == 1 and counters["accepted"] == 1


class _CliRouter:
    """``python -m fastamqp.intermediary`` in a child; ``counters`` asks it for a
    snapshot (SIGUSR1: one JSON line on its stdout)."""

    def __init__(self, engine, *args):
        import re
        import subprocess
        import sys
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fastamqp.intermediary", "--mode", "router",
             "--engine", engine, "--listen", "127.0.0.1:0", *args],
            stdout=subprocess.PIPE, text=True, env=_child_env(), cwd=tempfile.gettempdir())
        m = re.search(r"listening on (amqp://127\.0\.0\.1:\d+)", self.proc.stdout.readline())
        assert m
        self.url = m.group(1)

    @property
    def counters(self):
        import json
        import signal
        self.proc.send_signal(signal.SIGUSR1)
        return json.loads(self.proc.stdout.readline())

    def stop(self):
        self.proc.terminate()
        self.proc.communicate(timeout=20)


@pytest.fixture(params=["python", "c"])
def cli_router(request):
    """Listed before ``connect``: the clients close before the router stops."""
    im = _CliRouter(request.param, "--link-capacity", "20")
    yield im
    im.stop()


def test_cli_link_capacity_and_counters_on_sigusr1(cli_router, connect):
    assert cli_router.counters["dropped_presettled"] == 0
    check_congested_consumer_discards_presettled(cli_router, connect, ANYCAST, 20)


def test_cli_engine_c_refuses_what_it_cannot_do():
    import os
    import subprocess
    import sys
    env = _child_env()
    p = subprocess.run([sys.executable, "-m", "fastamqp.intermediary", "--engine", "c",
                        "--sasl-mechanisms", "PLAIN"], capture_output=True, text=True,
                       env=env, cwd=tempfile.gettempdir())
    assert p.returncode == 2 and "--engine c supports" in p.stderr


# -- churn ------------------------------------------------------------------------------

CHURN_ADDRS = {"router": [ANYCAST, MULTICAST, "unicast.churn", "other.churn"],
               "broker": ["unicast.churn", "exclusive.churn", "broadcast.churn",
                          "other.churn"]}


@pytest.mark.parametrize("mode", ["router", "broker"])
def test_churn_leaves_nothing_behind(mode):
    """Random outcomes, unsettled leftovers, link closes and vanishing clients: the
    relay keeps serving and its connection and link gauges return to zero (run it
    under ASan for use-after-free and leaks, see docs/relay.md)."""
    import random
    from proton.reactor import AtMostOnce
    rnd = random.Random(7)
    with Relay(mode=mode) as r:
        live = []
        for _ in range(8):
            c = BlockingConnection(r.url, timeout=T)
            p = BlockingConnection(r.url, timeout=T)
            live += [c, p]
            rcvs = [rx(c, a, credit=rnd.randint(1, 20))
                    for a in CHURN_ADDRS[mode] for _ in range(rnd.randint(0, 2))]
            rcvs.append(rx(c, None, dynamic=True, credit=5))
            addrs = CHURN_ADDRS[mode] + [rcvs[-1].link.remote_source.address]
            for a in addrs:
                opts = AtMostOnce() if rnd.random() < 0.3 else None
                s = tx(p, a, options=opts)
                pump(p, 0.02)
                for _ in range(rnd.randint(0, 30)):
                    if s.link.credit > 0:
                        s.link.send(Message(body="x" * rnd.choice([10, 1000, 70000])))
                pump(p, 0.02)
            for _ in range(3):
                pump(c, 0.01)
                pump(p, 0.01)
                for x in rcvs:
                    while x.fetcher.has_message:
                        x.receive(timeout=T)
                        if not x.fetcher.unsettled:
                            continue    # pre-settled
                        k = rnd.random()
                        if k < 0.5:
                            x.accept()
                        elif k < 0.65:
                            x.reject()
                        elif k < 0.8:
                            x.release(delivered=False)
                        elif k < 0.9:
                            x.release(delivered=True)
                        # else: left unsettled
            k = rnd.random()
            if k < 0.4:
                vanish(c)
            elif k < 0.7:
                for x in rcvs[: len(rcvs) // 2]:
                    x.close()
            if rnd.random() < 0.3:
                vanish(p)
        for c in live:
            if c.conn.transport is not None:     # not vanished already
                vanish(c)
        until(lambda: r.counters["connections"] == 0)
        n = r.counters
        assert n["links"] == 0 and n["received"] > 0 and n["forwarded"] > 0
        # still serving
        roundtrip(r.url, "unicast.after", "after")


OUT_OF_DESCRIPTORS = r'''
import resource, socket, sys, time
sys.path.insert(0, sys.argv[1])
from fastamqp.intermediary.relay import Relay
relay = Relay(mode="router").start()
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
clients = []
try:
    while True:                      # fill the descriptor table; each socket connects
        s = socket.create_connection(("127.0.0.1", relay.port))
        clients.append(s)
except OSError:
    pass
time.sleep(0.2)                      # the relay has tried and failed to accept
cpu0, wall0 = time.process_time(), time.monotonic()
time.sleep(1.0)
busy = (time.process_time() - cpu0) / (time.monotonic() - wall0)
before = relay.counters["connections_total"]
for s in clients[:20]:               # free descriptors: the backlog gets in
    s.close()
deadline = time.monotonic() + 5
while relay.counters["connections_total"] == before and time.monotonic() < deadline:
    time.sleep(0.05)
print(busy, before, relay.counters["connections_total"], relay.running, flush=True)
relay.stop()
'''


def test_out_of_descriptors_does_not_spin(tmp_path):
    # accept() failing with EMFILE leaves the listener readable: polling it again at once
    # would keep a core busy until a descriptor is freed.
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(relay_mod.__file__)))
    script = tmp_path / "emfile.py"
    script.write_text(OUT_OF_DESCRIPTORS)
    out = subprocess.run([sys.executable, str(script), os.path.dirname(root)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    busy, before, after, running = out.stdout.split()
    assert float(busy) < 0.3, f"the relay used {float(busy):.0%} of a core while stuck"
    assert int(after) > int(before), "the backlog was not accepted once descriptors freed"
    assert running == "True"
