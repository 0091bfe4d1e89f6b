"""Bad input from the wire (issue 8, docs/reliability.md): a raw AMQP sender (the
python-qpid-proton reactor, not fastamqp) feeds poison messages through the embedded
router into an oslo RPC server and an oslo notification listener running on fastamqp.

Through a router the outcome the raw sender sees is the consumer's own, end to end, so
each message's fate is checked exactly:

* a message the driver cannot decode into a request (random bytes, invalid UTF-8,
  invalid JSON, wrong body section or type, missing keys, bad envelopes, oversized,
  truncated, sections out of order, ...) must be REJECTED and logged
  ("rejecting a malformed message");
* a well-formed driver message whose oslo content is wrong (no such method, missing
  notification fields) is the application's business: the driver accepts it and oslo
  logs the failure; it must not be redelivered (accepted, never released/modified);
* randomly mutated valid messages may be either, but nothing else;
* after each batch a good call and a good notification still succeed.

Size: FASTAMQP_FUZZ_WIRE_COUNT messages per engine (default 2,000, split between the
RPC server and the listener; CI). The long run (10^6) is ``scripts/fuzz-wire``.
FASTAMQP_FUZZ_WIRE_SEED fixes the seed (default: random, printed).
"""
import collections
import logging
import os
import random
import struct
import threading
import time

import oslo_messaging
import proton
import pytest
from proton.handlers import MessagingHandler
from proton.reactor import Container

from fastamqp.intermediary import Intermediary
from fastamqp.message import DEFAULT_MAX_MESSAGE_SIZE
from support.faults import conf, transports, wait_until  # noqa: F401 (fixtures)

pytestmark = pytest.mark.fuzz

COUNT = int(os.environ.get("FASTAMQP_FUZZ_WIRE_COUNT", "2000"))
BATCH = int(os.environ.get("FASTAMQP_FUZZ_WIRE_BATCH", "1000"))
# One message over the 64 MiB limit (slow through the pure-Python intermediary: off in
# CI, on in scripts/fuzz-wire).
OVERSIZED = os.environ.get("FASTAMQP_FUZZ_WIRE_OVERSIZED", "0") != "0"

RPC_ADDRESS = "openstack.org/om/rpc/anycast/openstack/fuzz"
NOTIFY_ADDRESS = "openstack.org/om/notify/anycast/openstack/fuzz-notes.info"

REJECT, ACCEPT, EITHER = "rejected", "accepted", "either"


# ---- message construction ----------------------------------------------------------

def encode(body=None, inferred=False, **props):
    msg = proton.Message(body=body, inferred=inferred)
    for key, value in props.items():
        setattr(msg, key, value)
    return msg.encode()


def section(code, payload):
    """A described section: 0x00 0x53 <code> then the encoded value bytes."""
    return b"\x00\x53" + bytes([code]) + payload


def str_value(raw):
    return (b"\xa1" + bytes([len(raw)]) + raw) if len(raw) < 256 else (
        b"\xb1" + struct.pack(">I", len(raw)) + raw)


def bin_value(raw):
    return (b"\xa0" + bytes([len(raw)]) + raw) if len(raw) < 256 else (
        b"\xb0" + struct.pack(">I", len(raw)) + raw)


PROPS = proton.Message(address="fuzz", reply_to=None).encode()   # a properties section


def good_request(i, method="record"):
    import json
    return json.dumps({"request": {"method": method, "args": {"id": f"good-{i}"}},
                       "context": {}})


def poison_kinds(rng):
    """(name, expected outcome, payload) makers; each takes an index."""
    import json

    def jtext(obj):
        return json.dumps(obj)
    kinds = [
        ("random-bytes", REJECT,
         lambda i: bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 300)))),
        ("random-data-section", REJECT,
         lambda i: PROPS + section(0x75, bin_value(
             bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 300)))))),
        ("invalid-utf8-value", REJECT,
         lambda i: PROPS + section(0x77, str_value(b'{"request": "\xff\xfe\xc3"}'))),
        ("invalid-utf8-data", REJECT,
         lambda i: PROPS + section(0x75, bin_value(b'{"request": {}, "context": "\xc3\x28"}'))),
        ("invalid-json-value", REJECT,
         lambda i: encode(body='{"request": {"method": ')),
        ("invalid-json-data", REJECT,
         lambda i: encode(body=b"{not json at all", inferred=True)),
        ("value-map", REJECT, lambda i: encode(body={"request": {"method": "x"},
                                                    "context": {}})),
        ("value-list", REJECT, lambda i: encode(body=["request", "context"])),
        ("value-int", REJECT, lambda i: encode(body=i)),
        ("value-binary", REJECT, lambda i: encode(body=b'{"request": {}}')),
        ("sequence", REJECT, lambda i: encode(body=[1, 2, 3], inferred=True)),
        ("json-list", REJECT, lambda i: encode(body=jtext([{"request": {}}]))),
        ("json-string", REJECT, lambda i: encode(body=jtext("request"))),
        ("no-context", REJECT, lambda i: encode(body=jtext({"request": {"method": "x"}}))),
        ("no-request", REJECT, lambda i: encode(body=jtext({"context": {}}))),
        ("request-not-map", REJECT,
         lambda i: encode(body=jtext({"request": [1], "context": {}}))),
        ("context-not-map", REJECT,
         lambda i: encode(body=jtext({"request": {}, "context": "ctx"}))),
        ("monitor-not-number", REJECT,
         lambda i: encode(body=jtext({"request": {}, "context": {},
                                      "call_monitor_timeout": "soon"}))),
        ("envelope-bad-version", REJECT,
         lambda i: encode(body=jtext({"request": {"oslo.version": "3.0",
                                                  "oslo.message": "{}"},
                                      "context": {}}))),
        ("envelope-not-string", REJECT,
         lambda i: encode(body=jtext({"request": {"oslo.version": "2.0",
                                                  "oslo.message": {"a": 1}},
                                      "context": {}}))),
        ("envelope-bad-json", REJECT,
         lambda i: encode(body=jtext({"request": {"oslo.version": "2.0",
                                                  "oslo.message": "{oops"},
                                      "context": {}}))),
        ("reply-on-request-address", REJECT,
         lambda i: encode(body=jtext({"response": 1}), correlation_id="c")),
        ("heartbeat-on-request-address", REJECT,
         lambda i: encode(correlation_id="c", ttl=5)),
        ("no-body-no-correlation", REJECT, lambda i: PROPS),
        ("msgpack-garbage", REJECT,
         lambda i: encode(body=b"\xc1\xc1\xc1", inferred=True,
                          content_type="application/msgpack")),
        ("unknown-content-type", REJECT,
         lambda i: encode(body=b"{}", inferred=True, content_type="text/x-fuzz")),
        ("truncated", REJECT, lambda i: encode(body=good_request(i))[:-7]),
        ("sections-out-of-order", REJECT,
         lambda i: encode(body=good_request(i))[len(PROPS):] + PROPS
         if encode(body=good_request(i)).startswith(PROPS) else b"\x00\x53\x70"),
        ("trailing-garbage", REJECT, lambda i: encode(body=good_request(i)) + b"\x00\x53"),
        ("app-props-int-key", REJECT,
         lambda i: section(0x74, b"\xc1\x04\x02\x54\x01\x40") + encode(
             body=good_request(i))),
        ("empty", REJECT, lambda i: b""),
        # Well-formed for the driver; wrong for oslo: accepted, oslo logs it.
        ("no-such-method", ACCEPT,
         lambda i: encode(body=good_request(i, method="no_such_method"))),
        ("no-properties", ACCEPT,
         lambda i: encode(body=jtext({"request": {"method": "record",
                                                  "args": {"id": f"np-{i}"}},
                                      "context": {}}))),
        ("mutated", EITHER, lambda i: mutate(rng, encode(
            body=good_request(i), message_id=f"m-{i}", ttl=30))),
    ]
    return kinds


def mutate(rng, data):
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(3)
        pos = rng.randrange(len(data))
        if op == 0:
            data[pos] = rng.getrandbits(8)
        elif op == 1:
            del data[pos]
        else:
            data.insert(pos, rng.getrandbits(8))
    return bytes(data)


# ---- the raw sender -----------------------------------------------------------------

class RawSender(MessagingHandler):
    """Sends raw transfer payloads to addresses; records each outcome by index."""

    def __init__(self, url, items, timeout):
        super().__init__(prefetch=0, auto_accept=False, auto_settle=True)
        self.url = url
        self.queues = collections.defaultdict(collections.deque)
        for index, (address, payload) in enumerate(items):
            self.queues[address].append((index, payload))
        self.expected = len(items)
        self.outcomes = {}
        self.conditions = {}
        self.timeout = timeout
        self.conn = None
        self.error = None

    def on_start(self, event):
        self.conn = event.container.connect(self.url, allowed_mechs="ANONYMOUS",
                                            reconnect=False)
        for address in self.queues:
            event.container.create_sender(self.conn, address)
        self.timer = event.container.schedule(self.timeout, self)

    def on_timer_task(self, event):
        if self.conn is not None:
            self.error = "timed out"
            self.conn.close()
            self.conn = None

    def on_sendable(self, event):
        link = event.sender
        queue = self.queues[link.target.address]
        while link.credit > 0 and queue:
            index, payload = queue.popleft()
            link.delivery(str(index).encode())
            link.stream(payload)
            link.advance()

    def _record(self, event, outcome):
        dlv = event.delivery
        index = int(dlv.tag)
        if outcome == "released" and dlv.remote_state == proton.Delivery.MODIFIED:
            outcome = "modified"
        self.outcomes[index] = outcome
        cond = dlv.remote.condition
        if cond is not None:
            self.conditions[index] = cond.name
        if len(self.outcomes) == self.expected:
            self.conn.close()
            self.conn = None
            self.timer.cancel()     # or the reactor runs until the timer

    def on_accepted(self, event):
        self._record(event, "accepted")

    def on_rejected(self, event):
        self._record(event, "rejected")

    def on_released(self, event):
        self._record(event, "released")

    def on_transport_error(self, event):
        self.error = str(event.transport.condition)

    def run(self):
        container = Container(self)
        container.container_id = "fuzz-wire-raw-sender"
        runner = threading.Thread(target=container.run, daemon=True)
        runner.start()
        runner.join(self.timeout + 30)
        assert not runner.is_alive(), "the raw sender is stuck"
        return self.outcomes


# ---- the receiving side ----------------------------------------------------------

class Endpoint:
    def __init__(self):
        self.lock = threading.Lock()
        self.seen = collections.Counter()

    def record(self, ctxt, id):
        with self.lock:
            self.seen[id] += 1

    def add(self, ctxt, a, b):
        return a + b

    def info(self, ctxt, publisher_id, event_type, payload, metadata):
        with self.lock:
            self.seen[payload.get("id") if isinstance(payload, dict) else None] += 1


class MalformedCounter(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.rejections = 0     # (Handler.handle holds self.lock around emit)

    def emit(self, record):
        if record.name == "fastamqp.driver" and \
                record.getMessage().startswith("rejecting a malformed message"):
            self.rejections += 1


def run_fuzz(transports, count, seed, batch=BATCH, oversized=OVERSIZED, progress=None):
    """Returns the figures; asserts as it goes."""
    rng = random.Random(seed)
    kinds = poison_kinds(rng)
    counter = MalformedCounter()
    logging.getLogger("fastamqp.driver").addHandler(counter)
    level = logging.getLogger("fastamqp.driver").level
    logging.getLogger("fastamqp.driver").setLevel(logging.DEBUG)
    figures = {"seed": seed, "sent": 0, "by_outcome": collections.Counter(),
               "by_kind": collections.defaultdict(collections.Counter), "bad": []}
    started = time.monotonic()
    try:
        with Intermediary(mode="router") as im:
            rpc = transports(im.url)
            endpoint = Endpoint()
            server = oslo_messaging.get_rpc_server(
                rpc, oslo_messaging.Target(topic="fuzz", server="s1"), [endpoint],
                executor="threading")
            notes = transports(im.url, notification=True)
            listener = oslo_messaging.get_notification_listener(
                notes, [oslo_messaging.Target(topic="fuzz-notes")], [endpoint],
                executor="threading")
            server.start()
            listener.start()
            try:
                assert wait_until(lambda: im.counters["links"] >= 4)
                client = oslo_messaging.get_rpc_client(
                    rpc, oslo_messaging.Target(topic="fuzz"), timeout=10)
                notifier = oslo_messaging.Notifier(notes, publisher_id="fuzz",
                                                   driver="messagingv2",
                                                   topics=["fuzz-notes"])
                done = 0
                round_no = 0
                while done < count:
                    n = min(batch, count - done)
                    items, meta = [], []
                    for i in range(n):
                        name, expect, make = kinds[rng.randrange(len(kinds))]
                        address = RPC_ADDRESS if rng.random() < 0.5 else NOTIFY_ADDRESS
                        items.append((address, make(done + i)))
                        meta.append((name, expect))
                    if oversized and round_no == 0:
                        big = encode(body=b"{" + b" " * DEFAULT_MAX_MESSAGE_SIZE + b"}",
                                     inferred=True)
                        items.append((RPC_ADDRESS, big))
                        meta.append(("oversized", REJECT))
                    sender = RawSender(im.url, items, timeout=10 + n / 200)
                    outcomes = sender.run()
                    if len(outcomes) != len(items):
                        missing = [i for i in range(len(items)) if i not in outcomes]
                        by = collections.Counter(
                            (items[i][0].rsplit("/", 1)[-1], meta[i][0]) for i in missing)
                        raise AssertionError(
                            f"{len(missing)} messages got no outcome "
                            f"(sender error: {sender.error}); missing by (address, kind): "
                            f"{dict(by)}; intermediary: {im.counters}")
                    for index, (name, expect) in enumerate(meta):
                        got = outcomes[index]
                        figures["by_outcome"][got] += 1
                        figures["by_kind"][name][got] += 1
                        ok = got == expect or (expect == EITHER and got in (
                            ACCEPT, REJECT))
                        if not ok:
                            figures["bad"].append((name, expect, got))
                    figures["sent"] += len(items)
                    done += n
                    round_no += 1
                    # The server and the listener still serve.
                    assert client.call({}, "add", a=done, b=1) == done + 1
                    notifier.info({}, "fuzz.ok", {"id": f"ok-{round_no}"})
                    assert wait_until(lambda: endpoint.seen[f"ok-{round_no}"] == 1)
                    if progress:
                        progress(figures)
                    assert not figures["bad"], figures["bad"][:20]
            finally:
                for s in (server, listener):
                    s.stop()
                    s.wait()
    finally:
        logging.getLogger("fastamqp.driver").removeHandler(counter)
        logging.getLogger("fastamqp.driver").setLevel(level)
    figures["logged_rejections"] = counter.rejections
    figures["seconds"] = round(time.monotonic() - started, 1)
    # Every rejection was logged, once.
    assert counter.rejections == figures["by_outcome"][REJECT], figures
    return figures


# The kinds that used to kill the pure-Python engine's I/O thread, when pyngus decoded
# every transfer with proton.Message.decode() before fastamqp saw the bytes (and handed
# on proton's re-encoding, which dropped trailing garbage). The engine now takes the raw
# bytes (fastamqp/engine/pure/io.py: _receive_raw); each kind keeps its own test.
ONCE_FATAL_KINDS = ("empty", "invalid-utf8-value", "mutated", "trailing-garbage")


def test_poison_messages_from_the_wire_are_rejected(engine, transports):
    seed = int(os.environ.get("FASTAMQP_FUZZ_WIRE_SEED") or random.randrange(2**32))

    def progress(f):
        if COUNT > 10 * BATCH:       # long runs (scripts/fuzz-wire) report as they go
            print(f"progress: sent={f['sent']} outcomes={dict(f['by_outcome'])} "
                  f"seed={seed}", flush=True)
    figures = run_fuzz(transports, COUNT, seed, progress=progress)
    print(f"\nFIGURES wire-fuzz: engine={engine.connection.__module__} seed={seed} "
          f"sent={figures['sent']} outcomes={dict(figures['by_outcome'])} "
          f"logged_rejections={figures['logged_rejections']} "
          f"kinds={len(figures['by_kind'])} seconds={figures['seconds']}")
    assert figures["by_outcome"]["modified"] == 0
    if COUNT >= 1000:
        assert len(figures["by_kind"]) >= len(poison_kinds(random.Random(0)))


@pytest.mark.parametrize("kind", ONCE_FATAL_KINDS)
def test_one_poison_message_does_not_stop_the_server(engine, transports, kind):
    # One message of ``kind`` (several for the random kinds), then a good call.
    rng = random.Random(1234)
    make = {k[0]: k for k in poison_kinds(rng)}[kind]
    with Intermediary(mode="router") as im:
        rpc = transports(im.url)
        endpoint = Endpoint()
        server = oslo_messaging.get_rpc_server(
            rpc, oslo_messaging.Target(topic="fuzz", server="s1"), [endpoint],
            executor="threading")
        server.start()
        try:
            assert wait_until(lambda: im.counters["links"] >= 3)
            n = 20 if kind in ("random-bytes", "mutated") else 1
            items = [(RPC_ADDRESS, make[2](i)) for i in range(n)]
            outcomes = RawSender(im.url, items, timeout=5).run()
            client = oslo_messaging.get_rpc_client(
                rpc, oslo_messaging.Target(topic="fuzz"), timeout=5)
            assert client.call({}, "add", a=1, b=2) == 3
            assert len(outcomes) == n
            if make[1] == REJECT:
                assert set(outcomes.values()) == {REJECT}, outcomes
            else:
                assert set(outcomes.values()) <= {REJECT, ACCEPT}, outcomes
        finally:
            server.stop()
            server.wait()
