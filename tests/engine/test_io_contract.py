"""The I/O-layer contract (fastamqp.engine.iolayer), run directly against both I/O
layers -- the C one (fastamqp.engine.c._io) and the pure-Python one
(fastamqp.engine.pure.io) -- not through the connection front, on real wire traffic
through the embedded intermediary.

A small harness plays the front's part: it reads the events from ``event_fd()`` on a
thread of its own and activates every connection the layer opens.
"""
import logging
import os
import select
import threading
import time

import pytest

from fastamqp.engine import iolayer, py_codec as codec
from fastamqp.engine.iolayer import (
    ACCEPTED, DONE, ERR_CLOSED, ERR_LOST, ERR_NO_CREDIT, ERR_TIMEOUT, EV_ACTIVE, EV_LOG,
    EV_LOST, EV_OPENED, EV_REPLY_READY, EV_STOPPED, FAILED, MODIFIED, PENDING, REJECTED,
    RELEASED, SEND_CONFIRM)
from fastamqp.intermediary import Intermediary

TIMEOUT = 10.0
ANYCAST = "openstack.org/om/rpc/anycast/openstack/contract"


@pytest.fixture
def layer(engine):
    """The I/O layer of the engine (the ``engine`` fixture: both, in the C install)."""
    return engine.connection.io_layer


def config(**overrides):
    """The config dict the front builds (front.Connection._make_engine)."""
    cfg = {"container_id": f"contract-{os.getpid()}-{time.monotonic_ns()}",
           "vhost": None, "properties": [("process", "contract")], "idle_timeout": 0.0,
           "retry_interval": 0.2, "retry_backoff": 2.0, "retry_interval_max": 1.0,
           "link_retry_delay": 0.2, "sender_link_timeout": 600.0, "reply_credit": 200,
           "trace": False, "sasl_config_dir": None, "sasl_config_name": None,
           "tls": False, "ca_file": None, "cert_file": None, "key_file": None,
           "key_password": None, "green": False, "window": 1000}
    cfg.update(overrides)
    return cfg


class Harness:
    """One Engine of ``layer`` and the events it posted, activated when opened (unless
    ``activate`` is False: then the test calls activate())."""

    def __init__(self, layer, port, activate=True, reply_address=None, **overrides):
        self.engine = layer.Engine(config(**overrides),
                                   [("127.0.0.1", port, None, None, "ANONYMOUS", None)])
        self.auto_activate = activate
        self.reply_address = reply_address
        self.events = []
        self.cond = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.engine.start()

    def _read(self):
        fd = self.engine.event_fd()
        while True:
            select.select([fd], [], [], None)
            try:
                os.read(fd, 4096)
            except BlockingIOError:
                pass
            for event in self.engine.take_events():
                with self.cond:
                    self.events.append(event)
                    self.cond.notify_all()
                if event[0] == EV_OPENED and self.auto_activate:
                    self.engine.activate(event[1], self.reply_address)
                if event[0] == EV_STOPPED:
                    return

    def wait_event(self, kind, after=0, timeout=TIMEOUT):
        """The first event of ``kind`` at index ``after`` or later."""
        limit = time.monotonic() + timeout
        with self.cond:
            while True:
                for event in self.events[after:]:
                    if event[0] == kind:
                        return event
                left = limit - time.monotonic()
                assert left > 0, f"no event {kind} in {self.events}"
                self.cond.wait(left)

    def kinds(self):
        with self.cond:
            return [event[0] for event in self.events]

    def active(self):
        self.wait_event(EV_ACTIVE)
        return self

    def close(self, drain=0.0):
        self.engine.close(drain)
        self.wait_event(EV_STOPPED, timeout=drain + TIMEOUT)
        assert self.engine.join(5.0)


@pytest.fixture
def harness(layer):
    made = []

    def make(im, **kw):
        h = Harness(layer, im.port, **kw)
        made.append(h)
        return h
    yield make
    for h in made:
        if EV_STOPPED not in h.kinds():
            h.close()


def finished(op, timeout=TIMEOUT):
    """Wait (with the op's own wait) until the op has a result; return result()."""
    limit = time.monotonic() + timeout
    res = op.result()
    while res[1] == PENDING:
        assert time.monotonic() < limit, "the op got no result"
        op.wait(res[0], limit)
        res = op.result()
    return res


def send(h, address, presettled=False, seconds=TIMEOUT, retry=-1, flags=0,
         in_doubt_resend=True, method="m"):
    return h.engine.send(address, codec.encode_request(address, {"method": method}, {}),
                         presettled, time.monotonic() + seconds, retry, in_doubt_resend,
                         flags)


def subscribed(h, address, credit=100):
    sub = h.engine.subscription(credit)
    sub.set_addresses([address])
    sub.subscribe()
    time.sleep(0.2)   # a router gives senders credit once it knows the consumer
    return sub


def take(sub, count=1, timeout=TIMEOUT):
    """``count`` records from ``sub``, waiting with its own wait()."""
    got = []
    limit = time.monotonic() + timeout
    while len(got) < count:
        records, seq, stopped = sub.take(count - len(got))
        got.extend(records)
        if len(got) >= count or stopped:
            break
        assert time.monotonic() < limit, f"{len(got)} of {count} records arrived"
        sub.wait(seq, limit)
    return got


def method_of(payload):
    return codec.decode(payload).request["method"]


# ---- the constants ------------------------------------------------------------------

def test_the_layer_exports_the_table(layer):
    assert {name: getattr(layer, name, None) for name in iolayer.TABLE} == iolayer.TABLE
    assert layer.SOURCE_SEP == iolayer.SOURCE_SEP
    assert isinstance(layer.GREEN_WAITS, bool)


# ---- events ---------------------------------------------------------------------------

def test_opened_then_active_only_after_activate(layer, harness, router):
    h = harness(router, activate=False)
    opened = h.wait_event(EV_OPENED)
    kind, generation, index, _, _, _, container, _, _, mech, props, tls, _ = opened
    assert generation > 0 and index == 0
    assert container and props.get("product") == "qpid-dispatch-router"
    assert mech == "ANONYMOUS" and tls is None
    time.sleep(0.3)
    assert EV_ACTIVE not in h.kinds(), "active before activate()"
    h.engine.activate(generation, None)
    assert h.wait_event(EV_ACTIVE)[1] == generation
    reply = h.wait_event(EV_REPLY_READY)
    assert reply[1] == generation and reply[6]          # a dynamic reply address


def test_activate_names_the_reply_queue(layer, harness, broker):
    h = harness(broker, reply_address="contract.replies").active()
    assert h.wait_event(EV_REPLY_READY)[6] == "contract.replies"


def test_lost_then_opened_again(layer, harness, router):
    h = harness(router).active()
    first = h.wait_event(EV_ACTIVE)[1]
    seen = len(h.events)
    router.faults.drop_connections()
    lost = h.wait_event(EV_LOST, after=seen)
    assert lost[1] == first and lost[6]                  # its generation, and why
    again = h.wait_event(EV_ACTIVE, after=seen)
    assert again[1] > first


def test_cannot_connect_is_a_loss_with_a_reason(layer):
    with Intermediary(mode="router") as im:
        port = im.port
    h = Harness(layer, port)                             # nothing listens there now
    try:
        lost = h.wait_event(EV_LOST)
        assert lost[6] and lost[5] == iolayer.SASL_NONE
    finally:
        h.close()


# ---- sends: outcomes, credit, deadlines -------------------------------------------------

@pytest.mark.parametrize("mode", ["broker", "router"])
def test_unsettled_send_accepted(layer, harness, mode):
    with Intermediary(mode=mode) as im:
        h = harness(im).active()
        address = ANYCAST if mode == "router" else "contract.queue"
        if mode == "router":
            sub = subscribed(h, address)
        op = send(h, address)
        if mode == "router":            # the consumer's outcome is the sender's
            record, = take(sub)
            assert method_of(record[0]) == "m" and record[1] == address
            assert record[2].settle(ACCEPTED)
        seq, state, outcome, failed, undeliverable, error, text = finished(op)
        assert (state, outcome, failed, undeliverable, error) == (DONE, ACCEPTED, False,
                                                                  False, 0)


@pytest.mark.parametrize("code, failed, undeliverable", [
    (RELEASED, False, False), (MODIFIED, True, False), (MODIFIED, True, True),
    (REJECTED, False, False)])
def test_outcomes_reach_the_op(layer, harness, router, code, failed, undeliverable):
    names = {RELEASED: "released", MODIFIED: "modified", REJECTED: "rejected"}
    router.faults.set_outcome(ANYCAST, names[code], delivery_failed=failed,
                              undeliverable_here=undeliverable)
    h = harness(router).active()
    subscribed(h, ANYCAST)                    # credit: the router knows a consumer
    res = finished(send(h, ANYCAST, retry=0))
    assert res[1:5] == (DONE, code, failed, undeliverable)
    if code == REJECTED:
        assert res[6] == "amqp:internal-error\nrejected by a test fault hook"


def test_settle_outcomes_reach_the_sender(layer, harness, router):
    h = harness(router).active()
    sub = subscribed(h, ANYCAST)
    for code in (REJECTED, RELEASED, ACCEPTED):
        op = send(h, ANYCAST, retry=0)
        record, = take(sub)
        assert record[2].settle(code)
        assert not record[2].settle(ACCEPTED)          # once only
        assert finished(op)[2] == code


def test_presettled_send_on_a_link_with_credit_is_done_at_once(layer, harness, broker):
    h = harness(broker).active()
    address = "contract.presettled"
    assert finished(send(h, address, presettled=True))[1:3] == (DONE, ACCEPTED)
    time.sleep(0.3)                                     # the link has had its credit
    for i in range(20):
        res = send(h, address, presettled=True, method=f"p{i}").result()
        assert res[1:3] == (DONE, ACCEPTED), f"send {i} waited for the I/O thread"
    sub = subscribed(h, address)
    got = [method_of(r[0]) for r in take(sub, 21)]
    assert got == ["m"] + [f"p{i}" for i in range(20)]


def test_no_credit_until_the_deadline(layer, harness, router):
    h = harness(router).active()
    started = time.monotonic()
    res = finished(send(h, ANYCAST + "/nobody", seconds=0.5))
    assert res[1] == FAILED and res[5] == ERR_NO_CREDIT
    assert 0.4 <= time.monotonic() - started < 5


def test_no_outcome_until_the_deadline(layer, harness, router):
    h = harness(router).active()
    sub = subscribed(h, ANYCAST)
    res = finished(send(h, ANYCAST, seconds=0.5))
    assert res[1] == FAILED and res[5] == ERR_TIMEOUT
    assert take(sub)                                   # it arrived; nobody settled it


def test_abandon(layer, harness, router):
    h = harness(router).active()
    op = send(h, ANYCAST + "/nobody", seconds=30)
    assert op.result()[1] == PENDING
    op.abandon(ERR_TIMEOUT, "given up")
    res = op.result()
    assert res[1] == FAILED and res[5] == ERR_TIMEOUT


# ---- confirmed sends and the window ---------------------------------------------------

def test_confirmed_window(layer, harness, router):
    h = harness(router, window=2).active()
    sub = subscribed(h, ANYCAST)
    first = [finished(send(h, ANYCAST, flags=SEND_CONFIRM, method=f"c{i}"))
             for i in range(2)]
    assert all(r[1:3] == (DONE, ACCEPTED) for r in first)   # taken, not yet settled
    assert h.engine.stats()["held"] == 2
    third = send(h, ANYCAST, flags=SEND_CONFIRM, method="c2")
    records = take(sub, 3)
    assert [method_of(r[0]) for r in records] == ["c0", "c1", "c2"]
    time.sleep(0.2)
    assert third.result()[1] == PENDING                  # no room: its caller waits
    assert h.engine.stats()["waiting_for_room"] == 1
    records[0][2].settle(ACCEPTED)                       # room for the third
    assert finished(third)[1:3] == (DONE, ACCEPTED)
    for record in records[1:]:
        record[2].settle(ACCEPTED)
    limit = time.monotonic() + TIMEOUT
    while h.engine.stats()["held"]:
        assert time.monotonic() < limit
        time.sleep(0.02)
    stats = h.engine.stats()
    assert stats["settled"] == 3 and stats["window"] == 2
    assert stats["waiting_for_room"] == 0 and stats["given_up"] == 0


def test_a_released_confirmed_send_goes_again(layer, harness, router):
    h = harness(router).active()
    sub = subscribed(h, ANYCAST)
    assert finished(send(h, ANYCAST, flags=SEND_CONFIRM))[2] == ACCEPTED
    record, = take(sub)
    record[2].settle(RELEASED)
    again, = take(sub)
    assert method_of(again[0]) == "m"
    again[2].settle(ACCEPTED)
    limit = time.monotonic() + TIMEOUT
    while h.engine.stats()["settled"] != 1:
        assert time.monotonic() < limit
        time.sleep(0.02)
    assert h.engine.stats()["resent_released"] == 1


def test_close_drains_then_logs_what_is_left(layer, harness, router):
    h = harness(router).active()
    sub = subscribed(h, ANYCAST)
    for i in range(3):
        assert finished(send(h, ANYCAST, flags=SEND_CONFIRM, method=f"d{i}"))[2] == ACCEPTED
    records = take(sub, 3)
    settler = threading.Timer(0.3, lambda: records[0][2].settle(ACCEPTED))
    settler.start()
    started = time.monotonic()
    h.close(drain=1.0)
    assert 0.9 <= time.monotonic() - started < 1.0 + TIMEOUT
    logs = [e for e in h.events if e[0] == EV_LOG]
    assert any(e[12] == logging.WARNING and "2 confirmed" in e[6] for e in logs), logs
    # A send after close never goes (the front turns callers away before): the pure
    # layer fails it at once, the C one leaves it to its caller's deadline.
    res = send(h, ANYCAST).result()
    assert res[1] == PENDING or (res[1] == FAILED and res[5] == ERR_CLOSED)


def test_stats_name_the_counters(layer, harness, router):
    h = harness(router, window=7).active()
    stats = h.engine.stats()
    assert set(stats) == {"held", "window", "waiting_for_room", "settled",
                          "resent_released", "resent_after_loss", "possibly_duplicated",
                          "rejected", "given_up", "fanout_dropped"}
    assert stats["window"] == 7 and stats["held"] == 0


# ---- calls --------------------------------------------------------------------------

def test_call_reply_correlation_and_heartbeats(layer, harness, router):
    client = harness(router).active()
    reply_to = client.wait_event(EV_REPLY_READY)[6]
    server = harness(router).active()
    call = client.engine.call("id-1")
    other = client.engine.call("id-2")
    seq, state, beats, error, text = call.state()
    assert (state, beats) == (PENDING, 0)
    hb = server.engine.send(reply_to, codec.encode_heartbeat(reply_to, "id-1", 5), True,
                            time.monotonic() + TIMEOUT, -1, True, 0)
    finished(hb)
    assert call.wait(seq, time.monotonic() + TIMEOUT) != seq
    assert call.state()[1:3] == (PENDING, 1)
    seq = call.state()[0]
    payload = codec.encode_reply(reply_to, "id-1", {"r": 1})
    finished(server.engine.send(reply_to, payload, True, time.monotonic() + TIMEOUT, -1,
                                True, 0))
    call.wait(seq, time.monotonic() + TIMEOUT)
    assert call.state()[1] == DONE
    assert call.take_reply() == payload
    assert other.state()[1] == PENDING                   # not its reply
    call.cancel()
    # A reply nobody claims (its call cancelled) is settled, not left to block.
    late = codec.encode_reply(reply_to, "id-1", {"r": 2})
    res = finished(server.engine.send(reply_to, late, False, time.monotonic() + TIMEOUT,
                                      0, True, 0))
    assert res[1] == DONE and res[2] == MODIFIED and res[3] and res[4]
    other.cancel()


def test_a_call_fails_when_the_connection_is_lost(layer, harness, router):
    h = harness(router).active()
    h.wait_event(EV_REPLY_READY)
    call = h.engine.call("lost-1")
    seq = call.state()[0]
    router.faults.drop_connections()
    call.wait(seq, time.monotonic() + TIMEOUT)
    _, state, _, error, text = call.state()
    assert state == FAILED and error == ERR_LOST and text


def test_calls_fail_at_close(layer, harness, router):
    h = harness(router).active()
    call = h.engine.call("closed-1")
    h.close()
    _, state, _, error, _ = call.state()
    # Closing loses the connection first: the call hears either.
    assert state == FAILED and error in (ERR_LOST, ERR_CLOSED)


# ---- subscriptions ----------------------------------------------------------------------

def test_subscription_take_settle_and_stop(layer, harness, broker):
    h = harness(broker).active()
    address = "contract.sub"
    for i in range(5):
        finished(send(h, address, method=f"s{i}"))
    sub = subscribed(h, address, credit=10)
    records = take(sub, 5)
    assert [method_of(r[0]) for r in records] == [f"s{i}" for i in range(5)]
    assert {r[1] for r in records} == {address}
    for r in records:
        assert r[2].settle(ACCEPTED)
    records, seq, stopped = sub.take(10)
    assert records == [] and not stopped
    started = time.monotonic()
    assert sub.wait(seq, started + 0.3) == seq            # nothing: waits until then
    assert time.monotonic() - started >= 0.25
    sub.stop()
    assert sub.take(10)[2]
    sub.unsubscribe()


def test_unsettled_deliveries_come_back_after_unsubscribe(layer, harness, broker):
    h = harness(broker).active()
    address = "contract.redeliver"
    finished(send(h, address))
    sub = subscribed(h, address)
    record, = take(sub)
    sub.stop()
    sub.unsubscribe()
    del record                                          # never settled
    again = subscribed(h, address)
    assert method_of(take(again)[0][0]) == "m"


def test_subscriptions_come_back_after_a_loss(layer, harness, router):
    h = harness(router).active()
    sub = subscribed(h, ANYCAST)
    seen = len(h.events)
    router.faults.drop_connections()
    h.wait_event(EV_ACTIVE, after=seen)
    time.sleep(0.3)
    op = send(h, ANYCAST)
    record, = take(sub)
    record[2].settle(ACCEPTED)
    assert finished(op)[2] == ACCEPTED


def test_a_shared_source_travels_as_one_string(layer, harness, broker):
    h = harness(broker).active()
    sub = h.engine.subscription(10)
    entry = iolayer.SOURCE_SEP.join(("contract.topic", "contract-group", "shared global topic"))
    sub.set_addresses([entry])
    sub.subscribe()
    time.sleep(0.3)
    finished(send(h, "contract.topic", presettled=True))
    record, = take(sub)
    assert record[1] == "contract.topic"
    record[2].settle(ACCEPTED)
