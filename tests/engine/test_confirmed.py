"""Confirmed sends, fanout with no receiver, releases and reconnection, at the engine
interface, on real wire traffic through the embedded intermediary (issues 14, 17, 18).

Every test runs on both connection engines (the ``engine`` fixture, tests/conftest.py).
A confirmed send (``confirm=True``) returns once the engine has taken the message and
the engine keeps it until the peer settles it: the tests look at what the consumer gets
and at the engine's ``statistics()``.
"""
import logging
import threading
import time

import pytest

from fastamqp import exceptions
from fastamqp.engine import policy
from fastamqp.engine import c_connection, py_codec as codec
from fastamqp.intermediary import Intermediary
from fastamqp.engine.interface import Outcome
from support.connection import TIMEOUT, connect, deadline, request  # noqa: F401

ANYCAST = "openstack.org/om/rpc/anycast/openstack/confirmed"
MULTICAST = "openstack.org/om/rpc/multicast/openstack/confirmed"


def wait_for(predicate, timeout=TIMEOUT, what="the condition"):
    limit = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < limit, f"timed out waiting for {what}"
        time.sleep(0.01)


def drain(sub, count, settle=Outcome.ACCEPTED, timeout=TIMEOUT):
    """Take ``count`` deliveries from ``sub`` (settling them), return their methods."""
    got = []
    limit = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < limit:
        for delivery in sub.poll(count - len(got), 0.2):
            got.append(codec.decode(delivery.payload).request["method"])
            if settle is not None:
                sub.settle(delivery, settle)
    return got


def confirmed(conn, address, method, seconds=TIMEOUT, **kw):
    return conn.send(address, request(address, method), presettled=False,
                     deadline=deadline(seconds), confirm=True, **kw)


def consumer_and_client(connect, router, credit=100, address=ANYCAST, **client_settings):
    """A consuming connection subscribed to ``address`` (a router gives senders
    credit only once a consumer is known) and a client connection; returns
    (subscription, client)."""
    consumer = connect(router)
    client = connect(router, **client_settings)
    sub = consumer.subscribe([address], credit)
    time.sleep(0.2)
    return sub, client


def test_a_confirmed_send_returns_before_its_outcome(connect, router):
    sub, client = consumer_and_client(connect, router, 500)
    for i in range(200):
        # Through a router the outcome is the consumer's, who settles nothing yet:
        # a plain unsettled send would wait here for it.
        assert confirmed(client, ANYCAST, f"m{i}").outcome is Outcome.ACCEPTED
    assert client.statistics()["held"] == 200
    got = drain(sub, 200)
    assert got == [f"m{i}" for i in range(200)]
    wait_for(lambda: client.statistics()["held"] == 0, what="the window to empty")
    stats = client.statistics()
    assert stats["settled"] == 200 and stats["given_up"] == 0


def test_a_full_window_blocks_and_fails_at_the_deadline(connect, router):
    sub, client = consumer_and_client(connect, router, 100, send_window=5)
    for i in range(5):
        confirmed(client, ANYCAST, f"m{i}")
    assert client.statistics()["held"] == 5
    started = time.monotonic()
    with pytest.raises(exceptions.SendTimeout, match="send window"):
        confirmed(client, ANYCAST, "late", seconds=1.0)
    assert 0.9 <= time.monotonic() - started < 3.0
    # Room again once the consumer settles: sends return at once.
    assert drain(sub, 6)[:5] == [f"m{i}" for i in range(5)]
    wait_for(lambda: client.statistics()["held"] == 0, what="the window to empty")
    started = time.monotonic()
    confirmed(client, ANYCAST, "again")
    assert time.monotonic() - started < 1.0
    assert drain(sub, 1) == ["again"]


def test_a_caller_waiting_for_room_is_taken_when_room_comes(connect, router):
    sub, client = consumer_and_client(connect, router, 100, send_window=2)
    confirmed(client, ANYCAST, "a")
    confirmed(client, ANYCAST, "b")
    done = threading.Event()
    threading.Thread(target=lambda: (confirmed(client, ANYCAST, "c"), done.set()),
                     daemon=True).start()
    assert not done.wait(0.5)           # the window is full: the caller waits
    deliveries = []
    while len(deliveries) < 3:
        deliveries += sub.poll(3 - len(deliveries), TIMEOUT)
    sub.settle(deliveries[0], Outcome.ACCEPTED)   # room for one
    assert done.wait(TIMEOUT)
    for delivery in deliveries[1:]:
        sub.settle(delivery, Outcome.ACCEPTED)
    wait_for(lambda: client.statistics()["held"] == 0, what="the window to empty")


def test_a_released_send_goes_again_until_delivered(connect, router):
    sub, client = consumer_and_client(connect, router, 10)
    router.faults.set_outcome(ANYCAST, "released")
    confirmed(client, ANYCAST, "flap")
    wait_for(lambda: client.statistics()["resent_released"] >= 3,
             what="three resends")
    router.faults.set_outcome(ANYCAST, None)
    assert drain(sub, 1) == ["flap"]
    wait_for(lambda: client.statistics()["settled"] == 1, what="the settlement")
    assert drain(sub, 1, timeout=0.5) == []          # delivered once


def test_released_resends_stop_at_the_deadline(connect, router, caplog):
    _, client = consumer_and_client(connect, router, 10)
    router.faults.set_outcome(ANYCAST, "released")
    with caplog.at_level(logging.ERROR, logger="fastamqp.send"):
        confirmed(client, ANYCAST, "never", seconds=1.0)
        wait_for(lambda: client.statistics()["given_up"] == 1, what="giving up")
        # The C engine's line reaches Python through its dispatcher thread.
        wait_for(lambda: "released" in caplog.text, timeout=2, what="the log line")
    stats = client.statistics()
    assert stats["held"] == 0
    # The pauses grow: far fewer resends than the second allows at the first pause.
    assert 2 <= stats["resent_released"] <= 1.0 / policy.RELEASED_PAUSE_FIRST / 2
    assert ANYCAST in caplog.text and "released" in caplog.text


def test_a_rejected_send_is_logged_once_and_not_resent(connect, router, caplog):
    _, client = consumer_and_client(connect, router, 10)
    router.faults.set_outcome(ANYCAST, "rejected")
    with caplog.at_level(logging.ERROR, logger="fastamqp.send"):
        confirmed(client, ANYCAST, "bad")
        wait_for(lambda: client.statistics()["rejected"] == 1, what="the rejection")
        time.sleep(0.3)
    stats = client.statistics()
    assert stats["resent_released"] == 0 and stats["held"] == 0
    lines = [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]
    assert len(lines) == 1
    assert ANYCAST in lines[0] and "amqp:internal-error" in lines[0]


def test_confirmed_sends_in_flight_go_again_after_a_connection_loss(connect):
    with Intermediary(mode="router") as router:
        sub, client = consumer_and_client(connect, router, 100)
        for i in range(20):
            confirmed(client, ANYCAST, f"m{i}", seconds=30)
        # The consumer has them, unsettled, when every connection is cut: all 20
        # are in doubt, so the client sends them all again, in order.
        assert len(drain(sub, 20, settle=None)) == 20
        router.faults.drop_connections()
        got = drain(sub, 20, timeout=20)
        assert got == [f"m{i}" for i in range(20)]
        wait_for(lambda: client.statistics()["held"] == 0, what="the window to empty")
        stats = client.statistics()
        assert stats["resent_after_loss"] == 20 and stats["possibly_duplicated"] == 20


def test_a_fanout_with_no_receiver_returns_promptly(connect, router):
    client = connect(router)
    for presettled in (False, True):
        address = f"{MULTICAST}-{presettled}"
        started = time.monotonic()
        result = client.send(address, request(address), presettled=presettled,
                             deadline=deadline(30), confirm=True, fanout=True)
        first = time.monotonic() - started
        assert result.outcome is Outcome.ACCEPTED
        assert first < policy.FANOUT_CREDIT_WAIT + 1.0
        started = time.monotonic()
        client.send(address, request(address), presettled=presettled,
                    deadline=deadline(30), confirm=True, fanout=True)
        assert time.monotonic() - started < 0.5      # the link is known to be empty
    stats = client.statistics()
    assert stats["fanout_dropped"] == 4 and stats["held"] == 0


def test_a_fanout_with_receivers_is_delivered(connect, router):
    sub, client = consumer_and_client(connect, router, 100, MULTICAST)
    for i in range(10):
        client.send(MULTICAST, request(MULTICAST, f"f{i}"), presettled=False,
                    deadline=deadline(), confirm=True, fanout=True)
    assert drain(sub, 10) == [f"f{i}" for i in range(10)]
    assert client.statistics()["fanout_dropped"] == 0


def test_anycast_with_no_consumer_still_fails_at_the_deadline(connect, router):
    client = connect(router)
    started = time.monotonic()
    with pytest.raises(exceptions.SendTimeout, match="no credit"):
        confirmed(client, ANYCAST + "-nobody", "x", seconds=1.0)
    assert time.monotonic() - started >= 0.9


def test_a_send_waiting_for_credit_does_not_hold_up_other_addresses(connect, router):
    sub, client = consumer_and_client(connect, router, 100, send_window=3)
    stuck = []
    for _ in range(5):      # more callers waiting for credit than the window holds
        threading.Thread(target=lambda: stuck.append(pytest.raises(
            exceptions.SendTimeout, confirmed, client, ANYCAST + "-nobody", "x",
            seconds=3.0)), daemon=True).start()
    time.sleep(0.3)
    started = time.monotonic()
    for i in range(3):
        confirmed(client, ANYCAST, f"ok{i}")
    assert time.monotonic() - started < 1.0
    assert drain(sub, 3) == [f"ok{i}" for i in range(3)]
    wait_for(lambda: len(stuck) == 5, what="the stuck sends to fail")


def test_close_waits_for_the_window_to_be_settled(connect, router):
    sub, client = consumer_and_client(connect, router, 100)
    for i in range(30):
        confirmed(client, ANYCAST, f"m{i}")
    got = []
    settler = threading.Thread(target=lambda: (time.sleep(0.5), got.extend(drain(sub, 30))))
    settler.start()
    started = time.monotonic()
    client.close(10, drain=5)
    assert 0.4 < time.monotonic() - started < 5
    settler.join(TIMEOUT)
    assert got == [f"m{i}" for i in range(30)]
    assert client.statistics()["settled"] == 30


def test_close_gives_up_at_the_drain_limit_and_says_so(connect, router, caplog):
    _, client = consumer_and_client(connect, router, 100)
    for i in range(3):
        confirmed(client, ANYCAST, f"m{i}")
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="fastamqp.send"):
        client.close(10, drain=0.5)
        wait_for(lambda: "given up" in caplog.text, timeout=2, what="the warning")
    assert time.monotonic() - started < 3
    assert "3 confirmed message(s)" in caplog.text


@pytest.mark.parametrize("down", [0.3, 2.5])
def test_reconnection_after_a_loss_is_prompt(connect, down):
    with Intermediary(mode="router") as router:
        client = connect(router, retry_interval=1.0, retry_backoff=2.0)
        time.sleep(1.1)       # up longer than retry_interval: a loss retries at once
        router.stop()
        wait_for(lambda: not client.active, what="the loss to be noticed")
        time.sleep(down)
        router.start()
        restarted = time.monotonic()
        client.wait_active(TIMEOUT)
        # Attempts at once, then every retry_interval while the outage is young:
        # found within about a second of the restart (a back-off of 1, 2, 4 s would
        # have waited until 7 s after the loss for the 2.5 s outage).
        assert time.monotonic() - restarted < 1.6


@pytest.mark.skipif(c_connection is None, reason="the C engine is not built here")
def test_the_engines_share_their_policies():
    # fa_io.h and fastamqp.engine.policy each state the I/O-thread policies; they must agree.
    from fastamqp.engine.c import _io
    assert _io.POLICY == {"RELEASED_PAUSE_FIRST": policy.RELEASED_PAUSE_FIRST,
                          "RELEASED_PAUSE_MAX": policy.RELEASED_PAUSE_MAX,
                          "FANOUT_CREDIT_WAIT": policy.FANOUT_CREDIT_WAIT,
                          "RECONNECT_STEADY": policy.RECONNECT_STEADY}


@pytest.mark.skipif(c_connection is None, reason="the C engine is not built here")
def test_the_io_layers_share_their_constants():
    # fa_io.h (through _io) and fastamqp.engine.iolayer each state the op states,
    # outcome and error codes, event kinds and send flags; they must agree.
    from fastamqp.engine import iolayer
    from fastamqp.engine.c import _io
    from fastamqp.engine.pure import io as pure_io
    assert {name: getattr(_io, name, None) for name in iolayer.TABLE} == iolayer.TABLE
    assert {name: getattr(pure_io, name, None) for name in iolayer.TABLE} == iolayer.TABLE
    assert _io.SOURCE_SEP == pure_io.SOURCE_SEP == iolayer.SOURCE_SEP


def test_released_pauses_grow_and_stay_short():
    pauses = [policy.released_pause(n, 10) for n in range(8)]
    assert pauses[0] == policy.RELEASED_PAUSE_FIRST
    assert all(b >= a for a, b in zip(pauses, pauses[1:]))
    assert max(pauses) == policy.RELEASED_PAUSE_MAX
    assert policy.released_pause(5, 0.2) == 0.2      # never past link_retry_delay
