"""The connection front: fastamqp.engine.interface.Connection, once, over an I/O layer
(fastamqp.engine.iolayer) -- the C one (engine/c/_io.pyx over fa_io.c) or the pure-Python
one on pyngus (engine/pure/io.py). engine/c/connection.py and engine/pure/connection.py
bind it to theirs.

The I/O layer moves frames: credit, settlement, the deadline of every send, reply
correlation, reconnection. Everything callers see is decided here: how they wait, the
reply wait with its call monitor, subscriptions whose addresses depend on the peer,
the errors and their texts, the classification of a lost connection (with
fastamqp.engine.control), the fork guard and close. A small dispatcher thread reads the
I/O layer's events from a pipe and does what needs Python: addresses that depend on the
peer, the reply source, refusals turned into clear errors, the send log.

Waiting. Callers wait on the I/O layer's object (``wait(seq, until)``). A C wait blocks
the OS thread with the GIL released; in a process monkey-patched by eventlet that
would block the hub (and with it any green thread that must answer us, e.g. an RPC
server in the same process), so there, for an I/O layer whose waits are not green
(``GREEN_WAITS`` False), the I/O thread posts a wake-up event for every change and
callers wait on a green ``threading.Event`` set by the dispatcher, itself a green
thread blocked in a green ``select()`` on the pipe.

Fork safety. The I/O thread does not exist in a child process, and the I/O layer's
objects may have been copied mid-update: a child must never touch them.
``_fork_guard`` raises EngineClosed in the child, and the driver makes a fresh engine
there.
"""
import logging
import os
import select
import sys
import threading
import time

from fastamqp import exceptions
from fastamqp.engine.control import (SASL_NONE, SASL_OK, SEND_LOG, ControlPlane,
                                     is_tls_failure, window_full_text)
from fastamqp.engine.iolayer import (
    ACCEPTED, DONE, ERR_LOST, ERR_NO_CREDIT, ERR_SEND_FAILURE, ERR_TIMEOUT, ERR_WINDOW,
    EV_ACTIVE, EV_CONFIG_FAILED, EV_LOG, EV_LOST, EV_OPENED, EV_REPLY_READY, EV_STOPPED,
    EV_WAKE, FAILED, MODIFIED, PENDING, REJECTED, RELEASED, SEND_CONFIRM, SEND_FANOUT,
    SOURCE_SEP)
from fastamqp.engine.interface import Delivery, Outcome, PeerInfo, SendResult, Source, TLSInfo

LOG = logging.getLogger(__name__)

_OUTCOMES = {ACCEPTED: Outcome.ACCEPTED, RELEASED: Outcome.RELEASED,
             MODIFIED: Outcome.MODIFIED, REJECTED: Outcome.REJECTED}
_OUTCOME_CODES = {v: k for k, v in _OUTCOMES.items()}
# SendResult is frozen: one shared instance per outcome without details.
_PLAIN_RESULTS = {code: SendResult(outcome) for code, outcome in _OUTCOMES.items()}
_FAR = 365 * 86400.0    # "no deadline" for I/O-layer waits


def eventlet_patched():
    patcher = sys.modules.get("eventlet.patcher")
    return bool(patcher is not None and patcher.is_monkey_patched("thread"))


class _Waiter:
    """How a caller waits for one I/O-layer object to change: the object's own wait,
    or (an I/O layer whose waits are not green, under eventlet) a green Event the
    dispatcher sets."""

    __slots__ = ("conn", "obj", "event")

    def __init__(self, conn, obj):
        self.conn = conn
        self.obj = obj
        self.event = None
        if conn._green:
            self.event = threading.Event()
            conn._wakers[obj.id] = self.event

    def wait(self, seq, until):
        if self.event is None:
            self.obj.wait(seq, until)
        else:
            self.event.wait(max(0.0, until - time.monotonic()))
            self.event.clear()

    def done(self):
        if self.event is not None:
            # Wake whoever still waits here (a poll() being stopped by close()): the
            # dispatcher will no longer find this event for the object's last change.
            self.event.set()
            self.conn._wakers.pop(self.obj.id, None)


class _ReplyWaiter:
    def __init__(self, conn, message_id):
        self.message_id = message_id
        self._call = conn._engine.call(message_id)
        self._waiter = _Waiter(conn, self._call)

    def wait(self, deadline, monitor_timeout=None):
        call, beats_seen, monitor = self._call, None, None
        try:
            while True:
                seq, state, beats, error, text = call.state()
                now = time.monotonic()
                if beats_seen is None:
                    beats_seen = beats
                    if monitor_timeout is not None:
                        monitor = now + monitor_timeout
                if state == DONE:
                    return call.take_reply()
                if state == FAILED:
                    if error == ERR_LOST:
                        raise exceptions.ConnectionFailed(text)
                    raise exceptions.EngineClosed(text or "the connection was closed")
                if beats != beats_seen and monitor_timeout is not None:
                    beats_seen = beats     # a heartbeat restarts the monitor
                    monitor = now + monitor_timeout
                if now >= deadline:
                    raise exceptions.ReplyTimeout("no reply before the deadline")
                if monitor is not None and now >= monitor:
                    raise exceptions.CallMonitorTimeout(
                        "call monitor timed out: no heartbeat from the server")
                self._waiter.wait(seq, deadline if monitor is None else min(deadline, monitor))
        finally:
            self.cancel()

    def cancel(self):
        self._call.cancel()
        self._waiter.done()


def _entries(addresses):
    out = []
    for entry in addresses:
        if isinstance(entry, Source):
            fields = (entry.address, entry.link_name, " ".join(entry.capabilities))
            if any(SOURCE_SEP in f for f in fields):
                raise ValueError(f"{entry!r}: a control character in a source")
            out.append(SOURCE_SEP.join(fields))
        else:
            out.append(entry)
    return out


class _Subscription:
    def __init__(self, conn, addresses, credit):
        self._conn = conn
        self._address_source = addresses if callable(addresses) else list(addresses)
        self.addresses = [] if callable(addresses) else list(addresses)
        self._sub = conn._engine.subscription(credit)
        self._waiter = _Waiter(conn, self._sub)
        if not callable(addresses):
            self._sub.set_addresses(_entries(self.addresses))

    def refresh(self, peer):
        """Work the addresses out again for ``peer`` (a function of the PeerInfo)."""
        if callable(self._address_source) and peer is not None:
            self.addresses = list(self._address_source(peer))
            self._sub.set_addresses(_entries(self.addresses))

    def poll(self, max_batch, timeout):
        until = time.monotonic() + (_FAR if timeout is None else timeout)
        while True:
            records, seq, stopped = self._sub.take(max_batch)
            if records or stopped:
                return [Delivery(payload, address, token)
                        for payload, address, token in records]
            if time.monotonic() >= until:
                return []
            self._waiter.wait(seq, until)

    def settle(self, delivery, outcome):
        delivery.token.settle(_OUTCOME_CODES[outcome])

    def stop(self):
        self._sub.stop()

    def close(self):
        self._sub.unsubscribe()
        self._conn._forget(self)
        self._waiter.done()


class Connection(ControlPlane):
    """See fastamqp.engine.interface.Connection. A subclass names its I/O layer (a
    module implementing fastamqp.engine.iolayer) in ``io_layer``."""

    io_layer = None

    def __init__(self, hosts, settings):
        super().__init__(hosts, settings)
        self._green = eventlet_patched() and not self.io_layer.GREEN_WAITS
        self._wakers = {}            # green mode: I/O-layer object id -> Event
        self._subs = []
        self._subs_lock = threading.Lock()
        self._engine = None
        self._dispatcher = None
        self._stopped = threading.Event()
        self._closing = False
        self._generation = 0
        self._reply_address = None
        self._ca = None
        self._make_engine()

    # ---- set-up ------------------------------------------------------------------
    def _make_engine(self):
        settings = self._settings
        if settings.tls:
            try:
                self._ca = self._ca_file()
            except exceptions.FastAmqpError as exc:
                for index in range(len(self._hosts)):
                    self._refused(index, exceptions.ConnectionFailed(
                        f"TLS configuration error: {exc}"))
                return
        hosts = [self._io_host(host) for host in self._hosts]
        properties = [(str(k), str(v)) for k, v in settings.properties.items()]
        self._engine = self.io_layer.Engine({
            "container_id": settings.container_id,
            "vhost": settings.virtual_host,
            "properties": properties,
            "idle_timeout": float(settings.idle_timeout or 0),
            "retry_interval": float(settings.retry_interval),
            "retry_backoff": float(settings.retry_backoff),
            "retry_interval_max": float(settings.retry_interval_max),
            "link_retry_delay": float(settings.link_retry_delay),
            "sender_link_timeout": float(settings.sender_link_timeout or 0),
            "reply_credit": int(settings.reply_link_credit),
            "trace": bool(settings.trace),
            "sasl_config_dir": settings.sasl_config_dir,
            "sasl_config_name": settings.sasl_config_name,
            "tls": settings.tls,
            "ca_file": self._ca,
            "cert_file": settings.ssl_cert_file,
            "key_file": settings.ssl_key_file or settings.ssl_cert_file,
            "key_password": settings.ssl_key_password,
            "green": self._green,
            "window": int(settings.send_window),
        }, hosts)

    def _io_host(self, host):
        """``host`` as the I/O layer takes it, with its own SASL user and the name its
        TLS certificate must carry: made for THIS host, so a failover checks the name
        of the host it fails over to (LP#1938945)."""
        sasl = self._sasl_props(host)
        return (host.hostname, host.port, sasl.get("x-username"), sasl.get("x-password"),
                sasl.get("x-sasl-mechs"),
                self._peer_name(host) if self._settings.tls else None)

    def _fork_guard(self):
        self._check_process()
        if self._engine is None:
            raise self._fatal or exceptions.EngineClosed("the engine is not running")

    # ---- lifecycle (any thread) --------------------------------------------------
    def start(self):
        if self._engine is None:
            return     # refused before starting (wait_active says why)
        self._dispatcher = threading.Thread(
            target=self._dispatch, daemon=True,
            name=f"fastamqp dispatcher {self._settings.container_id}")
        self._dispatcher.start()
        self._engine.start()

    def close(self, timeout=30.0, drain=0.0):
        if self._engine is None or self._closing or os.getpid() != self._pid:
            return
        self._closing = True
        self._engine.close(max(0.0, min(drain, timeout - 1.0)))
        if self._dispatcher is not None:
            self._stopped.wait(timeout)
        self._engine.join(0 if self._green else 1.0)

    def statistics(self):
        if self._engine is None:
            return {}
        return self._engine.stats()

    # ---- operations (any thread) ---------------------------------------------------
    def send(self, address, payload, *, presettled, deadline, retry=None,
             in_doubt_resend=True, confirm=False, fanout=False):
        # The fork guard and the closed check, inline: every cast pays them.
        engine = self._engine
        if engine is None or os.getpid() != self._pid:
            self._fork_guard()
        if self._closing or self._stopped.is_set():
            raise exceptions.EngineClosed("the connection was closed")
        flags = 0
        if confirm or fanout:
            flags = (SEND_CONFIRM if confirm else 0) | (SEND_FANOUT if fanout else 0)
        op = engine.send(address, payload, presettled, deadline,
                         -1 if retry is None or retry < 0 else retry, in_doubt_resend, flags)
        seq, state, outcome, failed, undeliverable, error, text = op.result()
        if state == PENDING:
            # Not done already: a pre-settled (or confirmed, within the window) send
            # on a link with credit is, with no round trip to the I/O thread.
            waiter = _Waiter(self, op)
            # One second past the deadline, the I/O thread would be stuck: never hang.
            limit = max(deadline, time.monotonic()) + 1.0
            try:
                while True:
                    waiter.wait(seq, limit)
                    seq, state, outcome, failed, undeliverable, error, text = op.result()
                    if state != PENDING:
                        break
                    if time.monotonic() >= limit:
                        op.abandon(ERR_TIMEOUT, "")
            finally:
                waiter.done()
        if state == DONE:
            if not (text or failed or undeliverable):
                return _PLAIN_RESULTS[outcome]
            condition = description = None
            if text:
                condition, _, description = text.partition("\n")
            return SendResult(_OUTCOMES[outcome], delivery_failed=failed,
                              undeliverable_here=undeliverable, condition=condition,
                              description=description or None)
        if error == ERR_NO_CREDIT:
            raise exceptions.SendTimeout(
                f"the peer gave no credit for {address} before the deadline (through a "
                f"router: no consumer)", no_credit=True)
        if error == ERR_TIMEOUT:
            raise exceptions.SendTimeout(
                f"no outcome for the message to {address} before its deadline")
        if error == ERR_WINDOW:
            raise exceptions.SendTimeout(window_full_text(address, self._settings))
        if error == ERR_SEND_FAILURE:
            raise exceptions.SendFailure(text)
        if error == ERR_LOST:
            raise exceptions.ConnectionFailed(text)
        raise exceptions.EngineClosed(text or "the connection was closed")

    def reply_address(self, deadline):
        self._fork_guard()
        if not self._reply_ready.wait(max(0.0, deadline - time.monotonic())):
            raise exceptions.SendTimeout("the reply link is not attached")
        return self._reply_address

    def expect_reply(self, message_id):
        self._fork_guard()
        return _ReplyWaiter(self, message_id)

    def subscribe(self, addresses, credit):
        self._fork_guard()
        sub = _Subscription(self, addresses, credit)
        with self._subs_lock:
            sub.refresh(self._peer)
            self._subs.append(sub)
            sub._sub.subscribe()
        if self._stopped.is_set():
            sub.stop()
        return sub

    def _forget(self, sub):
        with self._subs_lock:
            if sub in self._subs:
                self._subs.remove(sub)

    # ---- the dispatcher thread -------------------------------------------------------
    def _dispatch(self):
        engine = self._engine
        fd = engine.event_fd()
        try:
            while True:
                select.select([fd], [], [], None)
                try:
                    os.read(fd, 4096)   # one read: under eventlet an empty pipe waits
                except BlockingIOError:
                    pass
                for event in engine.take_events():
                    if self._handle(event):
                        return
        except Exception:  # pragma: no cover - a bug: make it visible
            LOG.exception("fastamqp dispatcher crashed")
        finally:
            for sub in list(self._subs):
                sub.stop()
            self._active.clear()
            self._stopped.set()
            for event in list(self._wakers.values()):
                event.set()
            with self._status:
                self._status.notify_all()

    def _handle(self, event):
        (kind, generation, index, wake_id, remote_closed, sasl_outcome, text,
         cond_name, cond_desc, mech, props, tls, level) = event
        if kind == EV_WAKE:
            waker = self._wakers.get(wake_id)
            if waker is not None:
                waker.set()
        elif kind == EV_LOG:
            SEND_LOG.log(level, "%s", text)
        elif kind == EV_OPENED:
            self._on_opened(generation, index, text, props, mech, tls)
        elif kind == EV_ACTIVE:
            if generation == self._generation:
                self._set_active()
        elif kind == EV_REPLY_READY:
            if generation == self._generation:
                self._reply_address = text
                self._reply_ready.set()
        elif kind == EV_LOST:
            self._on_lost(generation, index, remote_closed, sasl_outcome, text,
                          cond_name, cond_desc, mech)
        elif kind == EV_CONFIG_FAILED:
            self._tls_config_failed(index, self._ca)
        elif kind == EV_STOPPED:
            return True
        return False

    def _on_opened(self, generation, index, container, props, mech, tls):
        host = self._hosts[index]
        self._current_index = index
        with self._subs_lock:
            self._generation = generation
            self._peer = peer = PeerInfo(host, container, props, mech,
                                         TLSInfo(*tls) if tls is not None else None)
        self._open_then(
            index, peer,
            lambda: self._generation == generation and not self._stopped.is_set(),
            lambda: self._activate(generation, peer))

    def _activate(self, generation, peer):
        """Attach the links of this connection (the I/O thread waits for it)."""
        with self._subs_lock:
            for sub in self._subs:
                try:
                    sub.refresh(peer)
                except Exception:
                    LOG.exception("cannot work out the addresses of a subscription")
        named = None
        source = self._settings.reply_source
        if source is not None:
            try:
                named = source(peer)
            except Exception:
                LOG.exception("reply_source failed; asking for a dynamic reply address")
        self._engine.activate(generation, named)

    def _on_lost(self, generation, index, remote_closed, sasl_outcome, text, cond_name,
                 cond_desc, mech):
        host = self._hosts[index]
        self._active.clear()
        self._reply_ready.clear()
        if self._closing:
            LOG.debug("connection to %r closed: %s", host, text)
            return
        LOG.warning("connection to %r lost: %s", host, text)
        if (sasl_outcome not in (SASL_NONE, SASL_OK)
                or (cond_name == "amqp:unauthorized-access" and not remote_closed)):
            self._sasl_failed(index, host, sasl_outcome, mech, cond_desc)
        elif self._settings.tls and text and is_tls_failure(text):
            self._tls_failed(index, host, text)
        else:
            self._error = exceptions.ConnectionFailed(
                f"connection to {host!r} failed: {text}")
            if remote_closed and cond_name:
                self._closed_by_peer(index, host, cond_name, cond_desc)
        with self._status:
            self._status.notify_all()
