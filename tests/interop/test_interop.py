"""Interoperability with the ORIGINAL amqp driver (oslo.messaging 14.9.3, impl_amqp1 +
pyngus, in .venv-orig; scripts/test sets FASTAMQP_ORIGINAL_PYTHON).

1. The original driver alone against the embedded intermediary, in router mode (it
   poses as qdrouterd, so the original picks routable addresses) and broker mode
   (qpidd, legacy addresses): an independent client and server confirm that the
   intermediary behaves like the real intermediaries do for them.
2. fastamqp (oslo.messaging 18 in this process) and the original (a subprocess running
   tests/support/original/rpc_peer.py) talking to each other in a hybrid deployment: RPC
   through the router, notifications through the broker. Both directions, both kinds of
   server on one topic at once (a rolling upgrade), the original monkey-patched by
   eventlet as services ran it, and the one deliberate difference (a notification
   listener's Target.exchange) asserted as documented behaviour.
3. What each driver puts on the wire (requests, notifications, replies, failures,
   call-monitor heartbeats), captured from broker queues and compared section by
   section: identical except absolute-expiry-time (the original's is from
   time.monotonic(), REFERENCE §3.9 #1).

The original driver is always a subprocess with a clean environment: PYTHONPATH must
not reach it, or /work/main's fastamqp.egg-info registers a second ``amqp`` entry point
there and its transport construction fails (DuplicateOptError: container_name).
"""
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import oslo_messaging
import proton
import pytest
from oslo_config import cfg

from fastamqp import engine
from fastamqp.engine.interface import ConnectionSettings, Host, Outcome
from fastamqp.intermediary import Intermediary
from support import paths

HERE = os.path.dirname(os.path.abspath(__file__))
PEER = os.path.join(paths.ORIGINAL, "rpc_peer.py")
TIMEOUT = 10            # any single wait in these tests
CLIENT_RUN_TIMEOUT = 60  # one whole original client run
# The original subscribes to every priority its notification endpoint answers (7);
# each connection also has its reply link. fastamqp: one reply link too.
ORIG_RPC_LINKS = 1 + 3
ORIG_NOTIFY_LINKS_PER_TOPIC = 7
PRIORITIES = ("info", "warn", "error")
TRACE_CTXT = {"user": "u1", "project_id": "p1",
              "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
NESTED = {"text": "h\u00e9llo \u2603", "list": [1, 2.5, None, True, "x"],
          "nested": {"a": {"b": []}}}
# Far more than one AMQP frame (the transfer is split and reassembled on both sides).
BIG = "\u00e9" * 300000 + "x" * 400000


# --------------------------------------------------------------------------------------
# The original driver's side: subprocesses
# --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def orig_python():
    python = os.environ.get("FASTAMQP_ORIGINAL_PYTHON")
    if not python:
        if os.environ.get("CI"):
            pytest.fail("FASTAMQP_ORIGINAL_PYTHON is not set: scripts/test sets it")
        pytest.skip("FASTAMQP_ORIGINAL_PYTHON is not set (scripts/test sets it up)")
    return python


def _orig_env():
    env = dict(os.environ)
    for name in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP"):
        env.pop(name, None)
    env["PYTHONWARNINGS"] = "ignore"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _peer_argv(python, eventlet):
    return [python, PEER] + (["--eventlet"] if eventlet else [])


def run_original_client(python, request, timeout=CLIENT_RUN_TIMEOUT, eventlet=False):
    """Run the original driver as a client; return its list of op results.
    ``eventlet``: monkey-patched, as services of its day ran."""
    request = dict(request, mode="client")
    t0 = time.monotonic()
    result = subprocess.run(_peer_argv(python, eventlet),
                            input=json.dumps(request) + "\n",
                            capture_output=True, text=True, timeout=timeout,
                            env=_orig_env(), cwd=HERE)
    assert result.returncode == 0, result.stderr[-5000:]
    out = json.loads(result.stdout)["results"]
    print("original client run: %.2f s, ops: %s" % (
        time.monotonic() - t0, [round(r["elapsed"], 2) for r in out]), file=sys.stderr)
    return out


class OriginalServer:
    """The original driver serving RPC and/or notifications in a subprocess.

    Every wait is bounded; ``close()`` always ends the process (stop, then terminate,
    then kill)."""

    def __init__(self, python, request, eventlet=False):
        self.request = dict(request, mode="server")
        self._stderr = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(_peer_argv(python, eventlet), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._stderr,
                                     text=True, env=_orig_env(), cwd=HERE)
        self._lines = queue.Queue()
        self.events = []
        self.result = None
        threading.Thread(target=self._read, daemon=True).start()
        self.proc.stdin.write(json.dumps(self.request) + "\n")
        self.proc.stdin.flush()

    def _read(self):
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def stderr(self):
        self._stderr.seek(0)
        return self._stderr.read()[-5000:]

    def _next_line(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        try:
            line = self._lines.get(timeout=left)
        except queue.Empty:
            raise TimeoutError from None
        if line is None:
            raise AssertionError("the original server exited early:\n" + self.stderr())
        if line.startswith("event "):
            self.events.append(json.loads(line[len("event "):]))
        elif line.startswith("result "):
            self.result = json.loads(line[len("result "):])
        return line

    def wait_ready(self, timeout=TIMEOUT):
        deadline = time.monotonic() + timeout
        try:
            while self._next_line(deadline) != "ready":
                pass
        except TimeoutError:
            raise AssertionError("the original server did not get ready:\n"
                                 + self.stderr()) from None

    def wait_events(self, count, timeout=TIMEOUT):
        deadline = time.monotonic() + timeout
        try:
            while len(self.events) < count:
                self._next_line(deadline)
        except TimeoutError:
            pass
        return list(self.events)

    def stop(self, timeout=TIMEOUT):
        """Close stdin (the server stops cleanly) and return what it received."""
        deadline = time.monotonic() + timeout
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            while self.result is None:
                self._next_line(deadline)
        except (TimeoutError, AssertionError):
            pass
        self.close()
        assert self.result is not None, "no result from the original server:\n" \
            + self.stderr()
        return self.result

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                try:
                    self.proc.wait(3)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(3)
        self._stderr.close()


@pytest.fixture
def original_server(orig_python):
    started = []

    def start(eventlet=False, **request):
        server = OriginalServer(orig_python, request, eventlet=eventlet)
        started.append(server)
        server.wait_ready()
        return server
    yield start
    for server in started:
        server.close()


# --------------------------------------------------------------------------------------
# The intermediary and fastamqp's side (oslo.messaging 18 in this process)
# --------------------------------------------------------------------------------------

def wait_for(predicate, what, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def wait_links(im, at_least, what):
    """Until ``at_least`` links are attached to ``im`` (listeners attach after listen()
    returns, in both drivers)."""
    wait_for(lambda: im.counters["links"] >= at_least,
             f"{what}: {at_least} links on the {im.mode}")


@pytest.fixture(params=["router", "broker"])
def bus(request):
    with Intermediary(mode=request.param) as im:
        yield im


@pytest.fixture
def conf():
    # oslo.messaging 18.3's tracing options live on the global CONF
    # (tests/driver/test_driver.py).
    cfg.CONF.reset()
    yield cfg.CONF
    cfg.CONF.reset()


@pytest.fixture
def fa(conf):
    """fastamqp's oslo.messaging objects; everything is stopped and cleaned up."""
    made = {"transports": [], "servers": []}

    class Factory:
        @staticmethod
        def rpc_transport(url):
            t = oslo_messaging.get_rpc_transport(conf, url=url)
            made["transports"].append(t)
            return t

        @staticmethod
        def notify_transport(url):
            t = oslo_messaging.get_notification_transport(conf, url=url)
            made["transports"].append(t)
            return t

        @staticmethod
        def rpc_server(transport, endpoint, topic="calc", server="fa1"):
            s = oslo_messaging.get_rpc_server(
                transport, oslo_messaging.Target(topic=topic, server=server),
                [endpoint], executor="threading")
            made["servers"].append(s)
            s.start()
            return s

        @staticmethod
        def listener(transport, endpoint, topics=("notifications",), exchange=None):
            s = oslo_messaging.get_notification_listener(
                transport, [oslo_messaging.Target(topic=t, exchange=exchange)
                            for t in topics],
                [endpoint], executor="threading")
            made["servers"].append(s)
            s.start()
            return s

        @staticmethod
        def client(transport, topic="calc", timeout=TIMEOUT, **kw):
            return oslo_messaging.get_rpc_client(
                transport, oslo_messaging.Target(topic=topic), timeout=timeout, **kw)
    yield Factory
    for s in made["servers"]:
        s.stop()
    for s in made["servers"]:
        s.wait()
    for t in made["transports"]:
        t.cleanup()


class InteropError(Exception):
    """Raised by fail_custom: the original client may not import this module, so it
    must get oslo_messaging.RemoteError naming the class."""


class RequestContext(dict):
    """A context the notifier keeps: oslo's Notifier (both versions) replaces a plain
    dict context with {} and sends ``redacted_copy()`` of anything else."""

    def redacted_copy(self):
        return dict(self)


class Recorder:
    def __init__(self):
        self.events = []
        self._cond = threading.Condition()

    def record(self, event):
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()

    def wait(self, count, timeout=TIMEOUT):
        with self._cond:
            self._cond.wait_for(lambda: len(self.events) >= count, timeout)
            return list(self.events)


class FaRpcEndpoint(Recorder):
    """The same methods as the original peer's endpoint
    (tests/support/original/rpc_peer.py)."""

    def __init__(self, name):
        super().__init__()
        self.name = name

    def add(self, ctxt, a, b):
        return a + b

    def echo(self, ctxt, data):
        return data

    def context_echo(self, ctxt):
        return ctxt

    def whoami(self, ctxt):
        return self.name

    def slow(self, ctxt, seconds):
        time.sleep(seconds)
        return "done"

    def record(self, ctxt, value):
        super().record({"kind": "cast", "value": value, "ctxt": ctxt})

    def fail(self, ctxt, message):
        raise ValueError(message)

    def fail_custom(self, ctxt, message):
        raise InteropError(message)


class FaNotifyEndpoint(Recorder):
    def _note(self, priority, ctxt, publisher_id, event_type, payload, metadata):
        self.record({"kind": "notification", "priority": priority, "ctxt": ctxt,
                     "publisher_id": publisher_id, "event_type": event_type,
                     "payload": payload})

    def info(self, *args):
        self._note("info", *args)

    def warn(self, *args):
        self._note("warn", *args)

    def error(self, *args):
        self._note("error", *args)


def ok(result):
    assert "ok" in result, result
    return result["ok"]


def err(result):
    assert "error" in result, result
    return result["error"]


def first_line(text):
    # oslo's deserialize_remote_exception appends the remote traceback to the message.
    return text.split("\n", 1)[0]


def casts(events):
    return sorted(e["value"] for e in events if e["kind"] == "cast")


def notes(events):
    return sorted((e["priority"], e["publisher_id"], e["event_type"],
                   json.dumps(e["payload"], sort_keys=True))
                  for e in events if e["kind"] == "notification")


# --------------------------------------------------------------------------------------
# 1. The original driver against the embedded intermediary
# --------------------------------------------------------------------------------------

ADDRESSES = {
    # What the original resolves (REFERENCE §3.3) for topic calc, server host1.
    "router": {
        "anycast": "openstack.org/om/rpc/anycast/openstack/calc",
        "direct": "openstack.org/om/rpc/unicast/openstack/calc/host1",
        "fanout": "openstack.org/om/rpc/multicast/openstack/calc",
        "notify": "openstack.org/om/notify/anycast/openstack/notifications.info",
    },
    "broker": {
        "anycast": "unicast.openstack.calc",
        "direct": "exclusive.openstack.calc.host1",
        "fanout": "broadcast.openstack.calc.all",
        "notify": "unicast.openstack.notifications.info",
    },
}


@pytest.mark.parametrize("mode", ["router", "broker"])
def test_original_driver_on_the_intermediary(mode, orig_python, original_server):
    with Intermediary(mode=mode) as im:
        early = []
        if mode == "broker":
            # Store and forward: a notification sent before any listener exists is
            # kept in its queue and delivered when one attaches.
            early = run_original_client(orig_python, {"notify_url": im.url, "ops": [
                {"op": "notify", "topic": "early", "priority": "info",
                 "publisher_id": "orig.early", "event_type": "before.listener",
                 "payload": {"n": 0}}]})
            assert ok(early[0]) is None
            assert im.counters["stored"] == 1
        topics = ["notifications", "early"] if mode == "broker" else ["notifications"]
        server = original_server(rpc_url=im.url, notify_url=im.url, topic="calc",
                                 server="host1", notify_topics=topics)
        wait_links(im, ORIG_RPC_LINKS + 1 + ORIG_NOTIFY_LINKS_PER_TOPIC * len(topics),
                   "the original server")
        ops = [
            {"op": "call", "topic": "calc", "method": "add", "args": {"a": 2, "b": 3},
             "timeout": 5},
            {"op": "call", "topic": "calc", "server": "host1", "method": "echo",
             "args": {"data": NESTED}, "timeout": 5},
            {"op": "call", "topic": "calc", "method": "fail",
             "args": {"message": "orig says no"}, "timeout": 5},
            {"op": "call", "topic": "calc", "method": "context_echo", "args": {},
             "ctxt": TRACE_CTXT, "timeout": 5},
            {"op": "cast", "topic": "calc", "method": "record", "args": {"value": "cast"}},
            {"op": "cast", "topic": "calc", "fanout": True, "method": "record",
             "args": {"value": "fanout"}},
            {"op": "cast", "topic": "calc", "server": "host1", "method": "record",
             "args": {"value": "direct"}},
            {"op": "notify", "priority": "info", "publisher_id": "orig.client",
             "event_type": "compute.instance.create.end", "payload": {"id": 1},
             "ctxt": {"user": "u1"}},
            # Nobody serves this topic: the router gives no credit for it, the broker
            # stores the request; either way the caller's timeout gives
            # MessagingTimeout.
            {"op": "call", "topic": "nobody", "method": "add", "args": {"a": 1, "b": 1},
             "timeout": 2},
        ]
        if mode == "router":
            # A router stores nothing: it gives no credit for an address nobody
            # listens to, the original waits until default_notify_timeout (5 s, the
            # minimum),
            # fails with MessageDeliveryFailure, and the notifier drops it (why
            # AMQP1.0.rst recommends a broker for notifications). The broker case is
            # the store-and-forward above.
            ops.append({"op": "notify", "topic": "unheard", "priority": "info",
                        "publisher_id": "orig.client", "event_type": "nobody.listens",
                        "payload": {}})
        results = run_original_client(
            orig_python, {"rpc_url": im.url,
                          "notify_url": im.url + "?default_notify_timeout=5",
                          "ops": ops})
        assert ok(results[0]) == 5
        assert ok(results[1]) == NESTED
        failure = err(results[2])
        assert (failure["type"], first_line(failure["message"])) == ("ValueError",
                                                                     "orig says no")
        assert ok(results[3]) == TRACE_CTXT
        for r in results[4:8]:
            assert ok(r) is None
        timeout = err(results[8])
        assert timeout["type"] == "MessagingTimeout"
        assert 1.5 < results[8]["elapsed"] < 5
        if mode == "router":
            # oslo's messaging notifier logs and swallows the MessageDeliveryFailure
            # ("Could not send notification"): the caller only sees the wait.
            assert ok(results[9]) is None
            assert results[9]["elapsed"] >= 4.5
            # Like qdrouterd (DISPATCH-1012), the router gave the sender no credit at
            # all: nothing was even transferred.
            assert "openstack.org/om/notify/anycast/openstack/unheard.info" not in \
                im.counters["addresses"]

        expected_notes = [("info", "orig.client", "compute.instance.create.end",
                           '{"id": 1}')]
        if mode == "broker":
            expected_notes.append(("info", "orig.early", "before.listener", '{"n": 0}'))
        events = server.wait_events(3 + len(expected_notes))
        received = server.stop()["received"]
        assert len(received) == len(events)
        assert casts(received) == ["cast", "direct", "fanout"]
        assert notes(received) == sorted(expected_notes)
        assert [e["ctxt"] for e in received if e["kind"] == "notification"
                and e["publisher_id"] == "orig.client"] == [{"user": "u1"}]

        # The intermediary saw the addresses the original uses with this kind of peer.
        counters = im.counters["addresses"]
        for pattern, address in ADDRESSES[mode].items():
            assert counters.get(address, {}).get("received", 0) >= 1, (pattern, address,
                                                                        sorted(counters))
        assert counters[ADDRESSES[mode]["anycast"]]["received"] == 4  # add/fail/ctx/cast
        assert counters[ADDRESSES[mode]["direct"]]["received"] == 2   # echo/record
        if mode == "broker":
            assert counters[ADDRESSES[mode]["anycast"]]["acknowledged"] == 4
            assert counters["unicast.openstack.nobody"]["enqueued"] == 1


# --------------------------------------------------------------------------------------
# 2. fastamqp and the original driver talking to each other (hybrid deployment)
# --------------------------------------------------------------------------------------

def test_original_client_to_fastamqp_server(router, broker, fa, orig_python):
    endpoint = FaRpcEndpoint("fa1")
    listener_endpoint = FaNotifyEndpoint()
    fa.rpc_server(fa.rpc_transport(router.url), endpoint, server="fa1")
    fa.listener(fa.notify_transport(broker.url), listener_endpoint)
    wait_links(router, 4, "fastamqp's RPC server")
    wait_links(broker, 1 + len(PRIORITIES), "fastamqp's notification listener")

    results = run_original_client(orig_python, {
        "rpc_url": router.url, "notify_url": broker.url, "ops": [
            # Every call has a timeout, so every request carries the original's
            # absolute-expiry-time from time.monotonic() (a date in 1970): fastamqp
            # must not treat it as expired.
            {"op": "call", "topic": "calc", "method": "add", "args": {"a": 20, "b": 22},
             "timeout": 5},
            {"op": "call", "topic": "calc", "server": "fa1", "method": "echo",
             "args": {"data": NESTED}, "timeout": 5},
            {"op": "call", "topic": "calc", "method": "context_echo", "args": {},
             "ctxt": TRACE_CTXT, "timeout": 5},
            {"op": "call", "topic": "calc", "method": "fail",
             "args": {"message": "fastamqp says no"}, "timeout": 5},
            {"op": "call", "topic": "calc", "method": "fail_custom",
             "args": {"message": "not importable"}, "timeout": 5},
            {"op": "call", "topic": "calc", "server": "fa1", "method": "whoami",
             "args": {}},  # no timeout: the original's default deadline, no ttl/expiry
            {"op": "call", "topic": "calc", "method": "echo", "args": {"data": BIG},
             "timeout": 10},
            {"op": "cast", "topic": "calc", "method": "record", "args": {"value": "cast"}},
            {"op": "cast", "topic": "calc", "fanout": True, "method": "record",
             "args": {"value": "fanout"}},
            {"op": "cast", "topic": "calc", "server": "fa1", "method": "record",
             "args": {"value": "direct"}, "ctxt": TRACE_CTXT},
            {"op": "notify", "priority": "info", "publisher_id": "orig.client",
             "event_type": "v2.event", "payload": {"v": 2}, "ctxt": TRACE_CTXT},
            # The legacy "messaging" notifier: version 1.0, no 2.0 envelope.
            {"op": "notify", "priority": "warn", "publisher_id": "orig.client",
             "event_type": "v1.event", "payload": {"v": 1}, "driver": "messaging"},
            {"op": "notify", "priority": "error", "publisher_id": "orig.client",
             "event_type": "v2.error", "payload": NESTED},
        ]})
    assert ok(results[0]) == 42
    assert ok(results[1]) == NESTED
    assert ok(results[2]) == TRACE_CTXT
    failure = err(results[3])
    assert (failure["type"], failure["module"], first_line(failure["message"])) == (
        "ValueError", "builtins", "fastamqp says no")
    assert "InteropError" not in failure["message"]
    assert "in fail\n" in failure["message"]  # the fastamqp server's traceback came too
    custom = err(results[4])
    assert custom["type"] == "RemoteError"
    assert custom["exc_type"] == "InteropError"
    assert custom["value"] == "not importable"
    assert ok(results[5]) == "fa1"
    assert ok(results[6]) == BIG
    for r in results[7:]:
        assert ok(r) is None

    events = endpoint.wait(3)
    assert casts(events) == ["cast", "direct", "fanout"]
    assert [e["ctxt"] for e in events if e["value"] == "direct"] == [TRACE_CTXT]
    received = listener_endpoint.wait(3)
    assert notes(received) == sorted([
        ("info", "orig.client", "v2.event", '{"v": 2}'),
        ("warn", "orig.client", "v1.event", '{"v": 1}'),
        ("error", "orig.client", "v2.error", json.dumps(NESTED, sort_keys=True))])
    assert [e["ctxt"] for e in received if e["event_type"] == "v2.event"] == [TRACE_CTXT]
    # Nothing was rejected as malformed or expired on the way.
    for im in (router, broker):
        assert im.counters["rejected"] == 0 and im.counters["modified"] == 0


def test_fastamqp_client_to_original_server(router, broker, fa, orig_python,
                                            original_server):
    server = original_server(rpc_url=router.url, notify_url=broker.url, topic="calc",
                             server="orig1", notify_topics=["notifications"])
    wait_links(router, ORIG_RPC_LINKS, "the original RPC server")
    wait_links(broker, 1 + ORIG_NOTIFY_LINKS_PER_TOPIC, "the original listener")

    rpc = fa.rpc_transport(router.url)
    client = fa.client(rpc)
    assert client.call({}, "add", a=20, b=22) == 42
    assert client.prepare(server="orig1").call({}, "echo", data=NESTED) == NESTED
    assert client.call({}, "echo", data=BIG) == BIG
    assert client.call(TRACE_CTXT, "context_echo") == TRACE_CTXT
    with pytest.raises(ValueError) as info:
        client.call({}, "fail", message="original says no")
    assert first_line(str(info.value)) == "original says no"
    assert "in fail\n" in str(info.value)  # the original server's traceback came too
    # The original server's class is in its __main__: not importable here.
    with pytest.raises(oslo_messaging.RemoteError) as info:
        client.call({}, "fail_custom", message="not importable")
    assert info.value.exc_type == "InteropError"
    assert info.value.value == "not importable"
    # The caller's timeout omitted: fastamqp's default deadline, no ttl on the request.
    assert fa.client(rpc, timeout=None).prepare(server="orig1").call(
        {}, "whoami") == "orig1"
    client.cast({}, "record", value="cast")
    client.prepare(fanout=True).cast({}, "record", value="fanout")
    client.prepare(server="orig1").cast(TRACE_CTXT, "record", value="direct")

    notifier_transport = fa.notify_transport(broker.url)
    oslo_messaging.Notifier(notifier_transport, publisher_id="fa.client",
                            driver="messagingv2", topics=["notifications"]).info(
        RequestContext(TRACE_CTXT), "v2.event", {"v": 2})
    oslo_messaging.Notifier(notifier_transport, publisher_id="fa.client",
                            driver="messaging", topics=["notifications"]).warn(
        {}, "v1.event", {"v": 1})

    server.wait_events(5)
    received = server.stop()["received"]
    assert casts(received) == ["cast", "direct", "fanout"]
    assert [e["ctxt"] for e in received if e.get("value") == "direct"] == [TRACE_CTXT]
    assert notes(received) == sorted([("info", "fa.client", "v2.event", '{"v": 2}'),
                                      ("warn", "fa.client", "v1.event", '{"v": 1}')])
    assert [e["ctxt"] for e in received if e.get("event_type") == "v2.event"] == [
        TRACE_CTXT]
    for im in (router, broker):
        assert im.counters["rejected"] == 0 and im.counters["modified"] == 0


def test_call_monitor_heartbeats_both_ways(router, fa, orig_python, original_server):
    """A 3.5 s call with a 2 s call monitor lives only if the server's heartbeats
    (body-less messages with correlation-id and ttl) are understood by the caller."""
    fa.rpc_server(fa.rpc_transport(router.url), FaRpcEndpoint("fa1"), server="fa1")
    original_server(rpc_url=router.url, topic="calc", server="orig1")
    wait_links(router, 2 * 4, "both RPC servers")
    rpc = fa.rpc_transport(router.url)
    results = {}

    def original_caller():
        results["orig"] = run_original_client(orig_python, {"rpc_url": router.url, "ops": [
            {"op": "call", "topic": "calc", "server": "fa1", "method": "slow",
             "args": {"seconds": 3.5}, "timeout": 15, "call_monitor_timeout": 2}]})

    # Both directions at once: the module's run time matters.
    caller = threading.Thread(target=original_caller)
    caller.start()
    try:
        client = fa.client(rpc, timeout=15, call_monitor_timeout=2)
        assert client.prepare(server="orig1").call({}, "slow", seconds=3.5) == "done"
    finally:
        caller.join(CLIENT_RUN_TIMEOUT)
    assert not caller.is_alive()
    (result,) = results["orig"]
    assert ok(result) == "done"
    assert result["elapsed"] >= 3.5


def test_both_drivers_serve_one_topic(bus, fa, orig_python, original_server):
    """A rolling upgrade: fastamqp and original servers on one topic, callers of both
    kinds. Direct calls reach the named server, fanout reaches both, anycast works.
    Through the router (routable addresses) and the broker (legacy addresses)."""
    fa_endpoint = FaRpcEndpoint("fa1")
    fa.rpc_server(fa.rpc_transport(bus.url), fa_endpoint, topic="mixed",
                  server="fa1")
    orig = original_server(rpc_url=bus.url, topic="mixed", server="orig1")
    wait_links(bus, 2 * 4, "both RPC servers")

    rpc = fa.rpc_transport(bus.url)
    client = fa.client(rpc, topic="mixed")
    assert client.prepare(server="fa1").call({}, "whoami") == "fa1"
    assert client.prepare(server="orig1").call({}, "whoami") == "orig1"
    anycast = {client.call({}, "whoami") for _ in range(6)}
    assert anycast <= {"fa1", "orig1"} and anycast
    client.prepare(fanout=True).cast({}, "record", value="fanout-from-fa")

    results = run_original_client(orig_python, {"rpc_url": bus.url, "ops": [
        {"op": "call", "topic": "mixed", "server": "fa1", "method": "whoami",
         "args": {}, "timeout": 5},
        {"op": "call", "topic": "mixed", "server": "orig1", "method": "whoami",
         "args": {}, "timeout": 5},
        {"op": "call", "topic": "mixed", "method": "add", "args": {"a": 1, "b": 2},
         "timeout": 5},
        {"op": "cast", "topic": "mixed", "fanout": True, "method": "record",
         "args": {"value": "fanout-from-orig"}},
    ]})
    assert [ok(r) for r in results] == ["fa1", "orig1", 3, None]

    both = ["fanout-from-fa", "fanout-from-orig"]
    assert casts(fa_endpoint.wait(2)) == both
    orig.wait_events(2)
    assert casts(orig.stop()["received"]) == both


def test_listener_target_exchange_differs_from_the_original(broker, fa, orig_python,
                                                          original_server):
    """A deliberate incompatibility (REFERENCE §3.5, §3.9 #3): the original listener
    discards Target.exchange and always listens in its own control_exchange; fastamqp
    honours it. A listener with Target(exchange="nova") therefore hears notifications
    sent to the default exchange ("openstack") on the original, and not on fastamqp,
    which hears only those sent to "nova". Services that relied on the discard must set
    the exchange they really mean (or none) when they move to fastamqp."""
    fa_endpoint = FaNotifyEndpoint()
    fa.listener(fa.notify_transport(broker.url), fa_endpoint, exchange="nova")
    orig = original_server(notify_url=broker.url, notify_topics=["notifications"],
                           notify_exchange="nova")
    wait_links(broker, (1 + len(PRIORITIES)) + (1 + ORIG_NOTIFY_LINKS_PER_TOPIC),
               "both listeners")
    results = run_original_client(orig_python, {"notify_url": broker.url, "ops": [
        {"op": "notify", "priority": "info", "publisher_id": "orig.client",
         "event_type": "default.exchange", "payload": {}}]})
    assert ok(results[0]) is None
    # fastamqp's notifier, sending to "nova" (a transport whose control_exchange is
    # nova, as in a nova service).
    cfg.CONF.set_override("control_exchange", "nova")
    nova = fa.notify_transport(broker.url)
    oslo_messaging.Notifier(nova, publisher_id="fa.client", driver="messagingv2",
                            topics=["notifications"]).info({}, "nova.exchange", {})

    assert [e["event_type"] for e in fa_endpoint.wait(1)] == ["nova.exchange"]
    orig.wait_events(1)
    assert [e["event_type"] for e in orig.stop()["received"]] == ["default.exchange"]
    counters = broker.counters["addresses"]
    assert counters["unicast.openstack.notifications.info"]["acknowledged"] == 1
    assert counters["unicast.nova.notifications.info"]["acknowledged"] == 1
    time.sleep(0.2)  # nothing else arrives late
    assert len(fa_endpoint.events) == 1


def test_eventlet_patched_original_interoperates(router, broker, fa, orig_python,
                                                 original_server):
    """The original as most services ran it: eventlet.monkey_patch() and the eventlet
    executor (the peer's --eventlet). Its server answers fastamqp's calls (heartbeats
    included), and its client calls a fastamqp server; notifications both ways."""
    orig = original_server(eventlet=True, rpc_url=router.url, notify_url=broker.url,
                           topic="calc", server="orig1", notify_topics=["notifications"])
    fa_endpoint = FaRpcEndpoint("fa1")
    fa_listener = FaNotifyEndpoint()
    fa.rpc_server(fa.rpc_transport(router.url), fa_endpoint, topic="calc-fa",
                  server="fa1")
    fa.listener(fa.notify_transport(broker.url), fa_listener, topics=["fa-notes"])
    wait_links(router, 2 * 4, "both RPC servers")
    wait_links(broker, (1 + ORIG_NOTIFY_LINKS_PER_TOPIC) + (1 + len(PRIORITIES)),
               "both listeners")

    results = {}

    def original_caller():
        results["orig"] = run_original_client(orig_python, {
            "rpc_url": router.url, "notify_url": broker.url, "ops": [
                {"op": "call", "topic": "calc-fa", "method": "add",
                 "args": {"a": 1, "b": 2}, "timeout": 5},
                {"op": "call", "topic": "calc-fa", "method": "fail",
                 "args": {"message": "patched no"}, "timeout": 5},
                {"op": "cast", "topic": "calc-fa", "fanout": True, "method": "record",
                 "args": {"value": "from-eventlet"}},
                {"op": "notify", "topic": "fa-notes", "priority": "error",
                 "publisher_id": "orig.eventlet", "event_type": "e", "payload": {}},
            ]}, eventlet=True)
    caller = threading.Thread(target=original_caller)
    caller.start()
    try:
        rpc = fa.rpc_transport(router.url)
        client = fa.client(rpc, timeout=15)
        assert client.call({}, "add", a=2, b=2) == 4
        assert client.prepare(server="orig1", call_monitor_timeout=2).call(
            {}, "slow", seconds=2.5) == "done"
        client.cast({}, "record", value="from-fa")
        oslo_messaging.Notifier(fa.notify_transport(broker.url), publisher_id="fa",
                                driver="messagingv2", topics=["notifications"]).warn(
            {}, "e", {})
    finally:
        caller.join(CLIENT_RUN_TIMEOUT)
    assert not caller.is_alive()
    add, fail, cast, note = results["orig"]
    assert ok(add) == 3
    assert (err(fail)["type"], first_line(err(fail)["message"])) == ("ValueError",
                                                                     "patched no")
    assert ok(cast) is None and ok(note) is None
    assert casts(fa_endpoint.wait(1)) == ["from-eventlet"]
    assert notes(fa_listener.wait(1)) == [("error", "orig.eventlet", "e", "{}")]
    orig.wait_events(2)
    received = orig.stop()["received"]
    assert casts(received) == ["from-fa"]
    assert notes(received) == [("warn", "fa", "e", "{}")]


# --------------------------------------------------------------------------------------
# 3. What goes on the wire, side by side
# --------------------------------------------------------------------------------------

def _raw_connection(im):
    conn = engine.Connection([Host("127.0.0.1", im.port)],
                             ConnectionSettings(container_id="raw-" + uuid.uuid4().hex))
    conn.start()
    conn.wait_active(TIMEOUT)
    return conn


def _capture(im, addresses, done, timeout=TIMEOUT):
    """Take messages off broker queues with a raw fastamqp connection until
    ``done(got)``; ``got`` maps each address to the payloads taken from it."""
    if isinstance(done, int):
        count = done
        done = lambda got: sum(len(v) for v in got.values()) >= count  # noqa: E731
    conn = _raw_connection(im)
    try:
        sub = conn.subscribe(lambda peer: list(addresses), 10)
        got = {}
        deadline = time.monotonic() + timeout
        while not done(got) and time.monotonic() < deadline:
            for d in sub.poll(10, 0.2):
                got.setdefault(d.address, []).append(bytes(d.payload))
                sub.settle(d, Outcome.ACCEPTED)
        sub.close()
        return got
    finally:
        conn.close(5)


def _sections(data):
    """[(descriptor, layout)]: each top-level section in wire order; for the header and
    properties lists the (index, AMQP type) of every field present, else the type of
    the section's value."""
    out = []
    offset = 0
    while offset < len(data):
        walker = proton.Data()
        offset += walker.decode(data[offset:])
        walker.rewind()
        assert walker.next() == proton.Data.DESCRIBED
        walker.enter()
        walker.next()
        code = walker.get_ulong()
        walker.next()
        value = walker.get_object()
        if isinstance(value, list):
            layout = [(i, type(v).__name__) for i, v in enumerate(value) if v is not None]
        else:
            layout = type(value).__name__
        out.append((hex(code), layout))
    return out


def _describe(data):
    """The sections and fields of one message as the wire has them."""
    msg = proton.Message()
    msg.decode(data)
    props = {
        "sections": _sections(data),
        "to": msg.address,
        "reply_to": msg.reply_to is not None,
        "message_id": type(msg.id).__name__ if msg.id is not None else None,
        "correlation_id": msg.correlation_id is not None,
        "content_type": None if msg.content_type in (None, "None") else msg.content_type,
        "subject": msg.subject,
        "user_id": bool(msg.user_id),
        "durable": msg.durable,
        "priority": msg.priority,
        "first_acquirer": msg.first_acquirer,
        "ttl": msg.ttl,
        "expiry_time": msg.expiry_time,
        "annotations": msg.annotations,
        "instructions": msg.instructions,
        "properties": msg.properties,
        "inferred": msg.inferred,
        "body_type": type(msg.body).__name__,
    }
    body = json.loads(msg.body) if isinstance(msg.body, str) else None
    return props, body


def test_wire_format_matches_the_original(broker, fa, orig_python):
    """Casts, calls and notifications from both drivers land in broker queues nobody
    serves; their sections and fields are compared. The one deliberate difference is
    absolute-expiry-time: the original computes it from time.monotonic() (REFERENCE
    §3.9 #1, near 1970), fastamqp from the wall clock."""
    rpc_ops = [
        {"op": "cast", "topic": "wire-orig", "method": "record", "args": {"value": 1},
         "ctxt": {"user": "u1"}},
        {"op": "call", "topic": "wire-orig", "method": "add", "args": {"a": 1, "b": 2},
         "ctxt": {"user": "u1"}, "timeout": 1},
        {"op": "notify", "topic": "wire-orig", "priority": "info", "publisher_id": "p",
         "event_type": "e", "payload": {"x": 1}, "ctxt": {"user": "u1"}},
    ]
    before = time.time()
    results = run_original_client(orig_python, {"rpc_url": broker.url,
                                                "notify_url": broker.url,
                                                "ops": rpc_ops})
    assert ok(results[0]) is None and err(results[1])["type"] == "MessagingTimeout"
    assert ok(results[2]) is None

    transport = fa.rpc_transport(broker.url)
    client = fa.client(transport, topic="wire-fa", timeout=1)
    client.cast({"user": "u1"}, "record", value=1)
    with pytest.raises(oslo_messaging.MessagingTimeout):
        client.call({"user": "u1"}, "add", a=1, b=2)
    oslo_messaging.Notifier(fa.notify_transport(broker.url), publisher_id="p",
                            driver="messagingv2", topics=["wire-fa"]).info(
        RequestContext({"user": "u1"}), "e", {"x": 1})
    after = time.time()

    queues = {"orig": ("unicast.openstack.wire-orig", "unicast.openstack.wire-orig.info"),
              "fa": ("unicast.openstack.wire-fa", "unicast.openstack.wire-fa.info")}
    got = _capture(broker, queues["orig"] + queues["fa"], 6)
    described = {}
    for who, (rpc_q, notify_q) in queues.items():
        assert len(got.get(rpc_q, [])) == 2 and len(got.get(notify_q, [])) == 1, got
        cast, call = sorted((_describe(m) for m in got[rpc_q]),
                            key=lambda d: d[0]["reply_to"])
        described[who] = {"cast": cast, "call": call, "notify": _describe(got[notify_q][0])}

    for kind in ("cast", "call", "notify"):
        (orig_props, orig_body), (fa_props, fa_body) = (described["orig"][kind],
                                                        described["fa"][kind])
        orig_expiry, fa_expiry = orig_props.pop("expiry_time"), fa_props.pop("expiry_time")
        orig_props.pop("to"), fa_props.pop("to")
        assert fa_props == orig_props, kind
        if kind == "call":
            # Both: ttl = the caller's timeout; expiry = now + timeout, in seconds.
            assert orig_props["ttl"] == 1.0
            assert orig_expiry < 10 ** 9  # monotonic clock: seconds since boot
            assert before + 1 - 1 <= fa_expiry <= after + 1 + 1
        else:
            assert orig_expiry == fa_expiry == 0
        # The body is the same JSON object, apart from the notification's id/time.
        if kind == "notify":
            for body in (orig_body, fa_body):
                inner = json.loads(body["request"]["oslo.message"])
                assert body["request"]["oslo.version"] == "2.0"
                inner.pop("message_id"), inner.pop("timestamp")
                body["request"] = inner
        assert fa_body == orig_body, kind


def test_reply_and_heartbeat_wire_format_matches_the_original(broker, fa, orig_python,
                                                              original_server):
    """Raw requests to a fastamqp and an original server (over the broker, so replies
    can be sent to ordinary queues and captured): a slow call with a call monitor
    (heartbeats, then the reply) and a failing call. The servers' messages must have
    the same sections, fields and bodies."""
    fa.rpc_server(fa.rpc_transport(broker.url), FaRpcEndpoint("fa1"), topic="wirerpc",
                  server="fa1")
    original_server(rpc_url=broker.url, topic="wirerpc", server="orig1")
    wait_links(broker, 2 * 4, "both RPC servers")

    from fastamqp import codec
    conn = _raw_connection(broker)
    sent = {}
    try:
        for who, server in (("fa", "fa1"), ("orig", "orig1")):
            address = f"exclusive.openstack.wirerpc.{server}"
            reply_to = f"unicast.capture.{who}"
            for method, args, monitor in (("slow", {"seconds": 2.5}, 2),
                                          ("fail", {"message": "wire says no"}, None)):
                message_id = codec.new_message_id()
                sent[(who, method)] = message_id
                payload = codec.encode_request(
                    address, {"method": method, "args": args}, {"user": "u1"},
                    message_id=message_id, reply_to=reply_to, timeout=10,
                    call_monitor_timeout=monitor)
                result = conn.send(address, payload, presettled=False,
                                   deadline=time.monotonic() + TIMEOUT)
                assert result.outcome is Outcome.ACCEPTED
    finally:
        conn.close(5)

    queues = {"fa": "unicast.capture.fa", "orig": "unicast.capture.orig"}

    def both_replied(got):
        return all(sum(1 for m in got.get(q, []) if _describe(m)[1] is not None) >= 2
                   for q in queues.values())
    got = _capture(broker, queues.values(), both_replied)
    assert both_replied(got), {q: len(v) for q, v in got.items()}

    seen = {}
    for who, q in queues.items():
        by_kind = {"heartbeat": [], "response": [], "failure": []}
        for data in got[q]:
            props, body = _describe(data)
            msg = proton.Message()
            msg.decode(data)
            assert props.pop("to") == q  # both set "to" = reply-to on replies
            if body is None:
                kind, expected_id = "heartbeat", sent[(who, "slow")]
            elif "failure" in body:
                kind, expected_id = "failure", sent[(who, "fail")]
            else:
                kind, expected_id = "response", sent[(who, "slow")]
            assert msg.correlation_id == expected_id, (who, kind)
            by_kind[kind].append((props, body, msg.ttl))
        seen[who] = by_kind

    # Heartbeats: no body section; correlation-id and ttl = the monitor timeout.
    assert seen["fa"]["heartbeat"] and seen["orig"]["heartbeat"]
    fa_beat, orig_beat = seen["fa"]["heartbeat"][0], seen["orig"]["heartbeat"][0]
    assert fa_beat[0] == orig_beat[0]
    assert fa_beat[2] == orig_beat[2] == 2.0

    (fa_reply,), (orig_reply,) = seen["fa"]["response"], seen["orig"]["response"]
    assert fa_reply[0] == orig_reply[0]
    assert fa_reply[1] == orig_reply[1] == {"response": "done"}

    (fa_fail,), (orig_fail,) = seen["fa"]["failure"], seen["orig"]["failure"]
    assert fa_fail[0] == orig_fail[0]
    assert set(fa_fail[1]) == set(orig_fail[1]) == {"failure"}
    fa_exc = json.loads(fa_fail[1]["failure"])
    orig_exc = json.loads(orig_fail[1]["failure"])
    assert set(fa_exc) == set(orig_exc)
    for key in ("class", "module", "message", "args", "kwargs"):
        assert fa_exc[key] == orig_exc[key], key
    assert (fa_exc["class"], fa_exc["module"], fa_exc["message"]) == (
        "ValueError", "builtins", "wire says no")
