"""oslo.messaging-level checks shared between tiers: endpoints, and whole checks that
tests/driver/ runs on the embedded intermediary and tests/intermediary/test_relay.py
runs again on the C relay (store and forward, notification pools)."""
import threading
import time

import oslo_messaging

TIMEOUT = 10


class Calculator:
    def __init__(self):
        self.casts = []
        self.cast_seen = threading.Event()

    def add(self, ctxt, a, b):
        return a + b

    def fail(self, ctxt):
        raise ValueError("the server says no")

    def context_echo(self, ctxt):
        return ctxt

    def record(self, ctxt, value):
        self.casts.append(value)
        self.cast_seen.set()

    def slow(self, ctxt, seconds):
        time.sleep(seconds)
        return "done"


class Recorder:
    def __init__(self):
        self.events = []
        self.lock = threading.Lock()

    def info(self, ctxt, publisher_id, event_type, payload, metadata):
        with self.lock:
            self.events.append(payload["n"])


def check_notification_stored_then_delivered(transports, url):
    """A notification sent before any listener exists reaches the listener that
    attaches later (store and forward); tests/intermediary/test_relay.py runs it on the
    relay."""
    transport = transports(url, notification=True)
    received = []
    seen = threading.Event()

    class Endpoint:
        def info(self, ctxt, publisher_id, event_type, payload, metadata):
            received.append((publisher_id, event_type, payload))
            seen.set()

    # Sent before any listener exists: the broker stores it.
    notifier = oslo_messaging.Notifier(transport, publisher_id="compute.host1",
                                       driver="messagingv2", topics=["notifications"])
    notifier.info({}, "compute.instance.create.end", {"id": 1})
    listener = oslo_messaging.get_notification_listener(
        transport, [oslo_messaging.Target(topic="notifications")], [Endpoint()],
        executor="threading")
    listener.start()
    try:
        assert seen.wait(TIMEOUT)
        assert received == [("compute.host1", "compute.instance.create.end",
                             {"id": 1})]
    finally:
        listener.stop()
        listener.wait()


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
