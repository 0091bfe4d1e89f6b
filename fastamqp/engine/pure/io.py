"""The pure-Python I/O layer on pyngus: fastamqp.engine.iolayer, as the C one implements
it, for the connection front (fastamqp.engine.front; engine/pure/connection.py binds them).

One I/O thread per connection runs a select() loop over the socket and a wake-up pipe.
Other threads never touch pyngus or Proton: they queue a callable with ``_call_soon``
-- except a send that can be told its result at once (see ``Engine.send``) -- and wait
on the object they hold (an Event, or a Condition for calls and subscriptions: green
under eventlet, so ``GREEN_WAITS``). Events for the front go through a pipe of their own.

What the I/O thread does, and why:
* failover: hosts are tried round robin; the delay starts at retry_interval and is
  MULTIPLIED by retry_backoff after each failure up to retry_interval_max, as the
  original driver did (REFERENCE §3.2), after a steady period (policy.RECONNECT_STEADY);
* a send waits for the peer's outcome; a pre-settled send completes when it has been
  written to the socket, not while it still waits for credit (REFERENCE §3.9 #7); a
  confirmed send (SEND_CONFIRM) completes once it is on the wire and within the send
  window, and the I/O thread keeps it until the peer settles it; both complete as soon
  as they are queued when their link has credit for them (and a confirmed one room in
  the window), as in the C layer -- callers cannot tell these apart;
* sends whose outcome was unknown when the connection dropped are sent again on the
  next connection while their retry budget and deadline allow (§3.9 #8);
* released (or modified, not undeliverable-here) confirmed sends go again after the
  pauses of fastamqp.engine.policy; fanouts nobody receives are dropped and counted;
* subscriptions and the reply link are attached again on every activation.
"""
import collections
import heapq
import itertools
import logging
import os
import select
import socket
import threading
import time
import weakref

import proton
import pyngus

from fastamqp import exceptions
from fastamqp.engine import policy
from fastamqp.engine.interface import Source, source_address
from fastamqp.engine.pure.codec import peek_reply
from fastamqp.engine.iolayer import (
    ACCEPTED, DONE, ERR_CLOSED, ERR_LOST, ERR_NO_CREDIT, ERR_NONE, ERR_SEND_FAILURE,
    ERR_TIMEOUT, ERR_WINDOW, EV_ACTIVE, EV_CONFIG_FAILED, EV_LOG, EV_LOST, EV_OPENED,
    EV_REPLY_READY, EV_STOPPED, FAILED, MODIFIED, PENDING, REJECTED, RELEASED, SASL_NONE,
    SEND_CONFIRM, SEND_FANOUT, SOURCE_SEP, TABLE)

# The constants of the interface, under their names (fastamqp.engine.iolayer.TABLE):
# the front and the contract tests read them from the I/O layer.
globals().update(TABLE)

# Waits are on threading primitives: green ones in a process monkey-patched by
# eventlet, where this I/O thread is a green thread too.
GREEN_WAITS = True

LOG = logging.getLogger(__name__)

_OUTCOMES = {
    pyngus.SenderLink.ACCEPTED: ACCEPTED,
    pyngus.SenderLink.RELEASED: RELEASED,
    pyngus.SenderLink.MODIFIED: MODIFIED,
    pyngus.SenderLink.REJECTED: REJECTED,
}
_LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO,
               "warning": logging.WARNING, "error": logging.ERROR}

# Op.result() of a send without a result yet, and of one taken (a confirmed send's
# caller is released with it; a pre-settled one's once written).
_PENDING = (0, PENDING, 0, False, False, ERR_NONE, "")
_TAKEN = (1, DONE, ACCEPTED, False, False, ERR_NONE, "")

# The ``done`` of a send whose caller was told ``_TAKEN`` when it queued the send and
# never waits: already set, so every "has its caller been told?" check holds, and
# the send costs no Event of its own.
_TOLD_AT_ONCE = threading.Event()
_TOLD_AT_ONCE.set()


class _Encoded:
    """What pyngus sends: it calls ``encode()`` exactly when the transfer is written,
    which is how a pre-settled send learns that it has left the credit queue."""

    __slots__ = ("payload", "on_write")

    def __init__(self, payload, on_write=None):
        self.payload = payload
        self.on_write = on_write

    def encode(self):
        if self.on_write is not None:
            self.on_write()
        return self.payload


class _Send:
    """One send (the interface's Op), alive until it has a result or an error; a
    confirmed one until the peer has settled it."""

    # Slots: a busy connection has thousands alive (in flight, in the deadline heap),
    # and every __dict__ is one more object for the garbage collector to walk.
    __slots__ = ("in_doubt_resend", "address", "payload", "presettled", "confirm",
                 "fanout", "deadline", "retries_left", "done", "res", "counted_by",
                 "taken", "held", "in_wwait", "ended", "attempts", "where")

    def __init__(self, address, payload, presettled, deadline, retry, in_doubt_resend=True,
                 confirm=False, fanout=False):
        self.in_doubt_resend = in_doubt_resend
        self.address = address
        self.payload = payload
        self.presettled = presettled
        self.confirm = confirm and not presettled
        self.fanout = fanout
        self.deadline = deadline
        self.retries_left = None if retry is None or retry < 0 else retry
        self.done = None         # set by Engine.send: an Event, or _TOLD_AT_ONCE
        self.res = _PENDING      # what result() returns
        self.counted_by = None   # the _Sender whose credit view counts it until it runs
        # I/O thread only.
        self.taken = False       # its caller was released; the engine owns it
        self.held = False        # counted in the send window
        self.in_wwait = False    # on the wire, its caller waiting for room
        self.ended = False       # the engine is finished with it
        self.attempts = 0        # resends after released / modified
        self.where = None        # "waiting" or "inflight" in its _Sender

    # The Op interface (any thread).
    @property
    def id(self):
        return id(self)

    def result(self):
        return self.res

    def wait(self, seen, until):
        if self.res[0] == seen:
            self.done.wait(max(0.0, until - time.monotonic()))
        return self.res[0]

    def abandon(self, error, text):
        self.fail(error, text)

    # Its result, once.
    def finish(self, res=_TAKEN):
        if not self.done.is_set() and self.res is _PENDING:
            self.res = res
            self.done.set()

    def finish_later(self, engine, res):
        """finish() whose caller is woken at the end of this turn of the I/O loop,
        after the socket write (I/O thread; see Engine._wake_later)."""
        if not self.done.is_set() and self.res is _PENDING:
            self.res = res
            engine._wake_later(self.done.set)

    def fail(self, error, text=""):
        if not self.done.is_set() and self.res is _PENDING:
            self.res = (1, FAILED, 0, False, False, error, text)
            self.done.set()

    def may_retry(self):
        if self.retries_left is None:
            return True
        if self.retries_left > 0:
            self.retries_left -= 1
            return True
        return False


class _Sender:
    """The cached sender link of one address, and what waits for it."""

    def __init__(self, engine, address):
        self.engine = engine
        self.address = address
        self.link = None
        self.active = False
        self.waiting = collections.deque()   # _Send, until the link is active
        self.credit_seen = False             # has the peer ever given this link credit?
        self.active_since = 0.0
        self.last_used = time.monotonic()
        self.in_flight = {}                  # handle -> _Send, awaiting the outcome
        # Shared with callers, under the engine's _lock: the credit a caller may take
        # without waiting (the link's credit less the sends waiting for it and the
        # sends callers have queued that this thread has not run yet), and those.
        self.view = 0
        self.queued = 0
        self.flowing = False                 # active and has had credit: a consumer exists
        self.retired = False                 # dropped: callers must not count on it

    def attach(self, pyngus_conn):
        name = f"fastamqp/sender/[{self.address}]/{next(self.engine._ids)}"
        self.link = pyngus_conn.create_sender(self.address, self.address,
                                              event_handler=self, name=name)
        self.link.user_context = self
        self.link.open()

    def submit(self, send):
        now = self.last_used = time.monotonic()
        if self.active and not self.waiting and self.link.credit > 0:
            self._transmit(send)
        elif (send.fanout and not self.credit_seen and self.active
              and now - self.active_since >= policy.FANOUT_CREDIT_WAIT):
            self.engine._drop_fanout(send)
        else:
            send.where = "waiting"
            self.waiting.append(send)
            if send.fanout and not self.credit_seen:
                # Look again once the link has had time to get credit.
                since = self.active_since if self.active else now
                self.engine._check_fanout_at(
                    max(since + policy.FANOUT_CREDIT_WAIT, now + 0.01), send)
        self.publish()

    def _drain(self):
        # Hand sends to pyngus only while there is credit: pyngus would queue the rest
        # out of our reach, and a send that ended at its deadline (reported
        # undeliverable or timed out) could still go out once credit came.
        while self.active and self.waiting and self.link.credit > 0:
            send = self.waiting.popleft()
            send.where = None
            self._transmit(send)
        self.publish()

    def publish(self):
        """Tell callers how much credit they may take without waiting (I/O thread,
        after anything that changes the link's credit or what waits for it)."""
        credit = self.link.credit - len(self.waiting) if self.active else 0
        engine = self.engine
        with engine._lock:
            if not self.retired:
                self.view = credit - self.queued
                self.flowing = self.active and self.credit_seen
                engine._views[self.address] = self

    def uncount(self):
        """A send a caller counted against this link's credit has been run."""
        with self.engine._lock:
            self.queued -= 1

    def retire(self):
        """This sender is being dropped: callers stop counting on its credit (call
        with the engine's _lock held)."""
        self.retired = True
        self.view = 0
        if self.engine._views.get(self.address) is self:
            del self.engine._views[self.address]

    @property
    def idle(self):
        return not self.waiting and not self.in_flight

    def _transmit(self, send):
        if send.ended or (send.done.is_set() and not send.taken):
            return  # given up, or its caller told of its deadline: never send late
        if send.presettled:
            # Complete after the next socket write: see _Encoded.
            self.link.send(_Encoded(send.payload,
                                    lambda: self.engine._written.append(send)))
        else:
            handle = next(self.engine._ids)
            self.in_flight[handle] = send
            send.where = "inflight"
            self.link.send(_Encoded(send.payload), self._outcome, handle)
            if send.confirm and not send.taken:
                self.engine._take_or_wait(send)

    def _outcome(self, link, handle, state, info):
        self.last_used = time.monotonic()
        send = self.in_flight.pop(handle, None)
        if send is None:
            return
        outcome = _OUTCOMES.get(state)
        if outcome is None:  # TIMED_OUT/ABORTED/UNKNOWN: our own timers decide
            return
        send.where = None
        info = info or {}
        if send.taken:
            self.engine._confirmed_outcome(send, outcome, info)
            return
        self.engine._leave_wwait(send)
        failed = bool(info.get("delivery-failed"))
        undeliverable = bool(info.get("undeliverable-here"))
        text = _condition_text(info.get("condition"))
        send.finish_later(self.engine, _TAKEN if outcome == ACCEPTED and not (
            failed or undeliverable or text) else (1, DONE, outcome, failed, undeliverable,
                                                   ERR_NONE, text))

    # pyngus SenderEventHandler
    def sender_active(self, link):
        self.active = True
        self.active_since = time.monotonic()
        self._drain()

    def sender_remote_closed(self, link, condition):
        LOG.warning("peer detached the sender link to %s: %s", self.address, condition)
        self.engine._sender_lost(self, condition)

    def sender_closed(self, link):
        pass

    def credit_granted(self, link):
        self.credit_seen = True
        self._drain()

    def sender_failed(self, link, error):
        LOG.warning("sender link to %s failed: %s", self.address, error)
        self.engine._sender_lost(self, error)


class _Call:
    """A reply correlation (the interface's Call), registered from its creation."""

    def __init__(self, engine, message_id):
        self._engine = engine
        self.message_id = message_id
        self.generation = engine._generation   # the connection it was made on
        self._cond = threading.Condition()
        self._seq = 0
        self._state = PENDING
        self._beats = 0
        self._error = ERR_NONE
        self._text = ""
        self._reply = None

    # any thread
    @property
    def id(self):
        return id(self)

    def state(self):
        with self._cond:
            return self._seq, self._state, self._beats, self._error, self._text

    def take_reply(self):
        with self._cond:
            reply, self._reply = self._reply, None
            return reply

    def wait(self, seen, until):
        with self._cond:
            while self._seq == seen:
                left = until - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return self._seq

    def cancel(self):
        calls = self._engine._calls
        if calls.get(self.message_id) is self:
            calls.pop(self.message_id, None)

    # I/O thread: the caller is woken at the end of this turn of the I/O loop
    # (Engine._wake_later)
    def deliver(self, payload):
        with self._cond:
            if self._state != PENDING:
                return
            self._reply, self._state = payload, DONE
            self._seq += 1
        self._engine._wake_later(self._wake)

    def heartbeat(self):
        with self._cond:
            self._beats += 1
            self._seq += 1
        self._engine._wake_later(self._wake)

    def _wake(self):
        with self._cond:
            self._cond.notify_all()

    def fail(self, error, text):
        with self._cond:
            if self._state == PENDING:
                self._state, self._error, self._text = FAILED, error, text
                self._seq += 1
                self._cond.notify_all()


def _receive_raw(link):
    """Make pyngus hand this receiver's messages over as the raw bytes of the
    transfer, instead of a ``proton.Message`` it decoded on the I/O thread.

    pyngus 2.3 (link.py, ``_ReceiverLink._process_delivery``) decodes every transfer
    with ``proton.Message.decode`` before calling the handler, and raises out of the
    I/O loop on a message it cannot decode (a 0-byte transfer, an amqp-value string
    that is not UTF-8): one poison message from the wire killed the connection. Its
    lenient decoder also drops trailing garbage, which the codec must see to reject
    the message. The driver decodes the bytes itself (fastamqp.codec), as it does over
    the C layer, so the decode and re-encode were also wasted work. This replaces the method
    on the instance and keeps pyngus's own bookkeeping (handle, unsettled map)."""
    pn_link = link._pn_link

    def process_delivery(pn_delivery):
        if not pn_delivery.readable or pn_delivery.partial:
            return
        data = pn_link.recv(pn_delivery.pending) or b""
        pn_link.advance()
        handle = "rmsg-%s:%x" % (link._name, link._next_handle)
        link._next_handle += 1
        link._unsettled_deliveries[handle] = pn_delivery
        with link._callback_lock:
            link._handler.message_received(link, bytes(data), handle)
    link._process_delivery = process_delivery
    return link


def _destroy_later(engine, link):
    """Free a receiver link closed at both ends, and its name with it (the next link
    of a shared subscription on this connection has the same name); on the I/O
    thread, but not from inside pyngus's callback."""
    def destroy():
        if link._pn_link is not None:
            try:
                link.destroy()
            except Exception:  # its connection was destroyed first: nothing left
                LOG.debug("destroying a closed receiver link", exc_info=True)
    engine._later(0, destroy)


class _ReplyLink:
    """The shared receiver with a dynamic source on which replies arrive."""

    def __init__(self, engine, credit):
        self.engine = engine
        self.credit = credit
        self.link = None
        self.address = None

    def attach(self, pyngus_conn, named):
        """A receiver on the queue ``named``, or (None) on a dynamic source."""
        name = f"fastamqp/receiver/[rpc-response]/{next(self.engine._ids)}"
        # No source address: pyngus asks the peer for a dynamic source.
        self.link = _receive_raw(pyngus_conn.create_receiver(
            named or "rpc-response", source_address=named, event_handler=self,
            name=name))
        if named is None:
            # RabbitMQ 4.1+ makes a temporary queue only for a dynamic source with
            # this capability; qdrouterd and qpidd ignore ones they do not know.
            self.link._pn_link.source.capabilities.put_symbol("temporary-queue")
        else:
            # A named reply queue (RabbitMQ): its messages settled. Replies are sent
            # pre-settled anyway and the queue is this connection's own: an
            # acknowledgement would only cost a disposition per call (as fa_io.c).
            self.link._pn_link.snd_settle_mode = proton.Link.SND_SETTLED
        self.link.add_capacity(self.credit)
        self.link.open()

    def receiver_active(self, link):
        self.address = link.source_address or link._pn_link.source.address
        self.engine._post(EV_REPLY_READY, text=self.address)

    def receiver_remote_closed(self, link, condition):
        # The reply address is gone with the link: treat as a connection failure so
        # that everything comes back on a fresh connection.
        LOG.warning("peer detached the reply link: %s", condition)
        self.engine._connection_lost(f"reply link detached: {condition}")

    def receiver_closed(self, link):
        _destroy_later(self.engine, link)

    def receiver_failed(self, link, error):
        self.engine._connection_lost(f"reply link failed: {error}")

    def message_received(self, link, data, handle):
        # Only the correlation-id and whether there is a body: the driver decodes the
        # reply (a proton.Message decode here was a second full decode per call).
        try:
            correlation_id, heartbeat = peek_reply(data)
        except exceptions.CodecError as exc:
            # Nobody can claim a reply whose correlation-id cannot be read: settle it
            # as a late reply (iolayer.Call), and keep the connection.
            LOG.error("refusing an undecodable message on the reply link: %s", exc)
            link.message_modified(handle, True, True, None)
            self._top_up(link)
            return
        waiter = self.engine._calls.get(correlation_id)
        if waiter is None or waiter._state != PENDING:
            # A late reply (its caller gave up) or one for another client: tell the
            # peer not to redeliver it here (REFERENCE §3.4).
            link.message_modified(handle, True, True, None)
        elif heartbeat:
            # No body, or (RabbitMQ 3.x adds one to body-less messages) an empty data
            # section: a heartbeat.
            waiter.heartbeat()
            link.message_accepted(handle)
        else:
            waiter.deliver(data)
            link.message_accepted(handle)
        self._top_up(link)

    def _top_up(self, link):
        if link.capacity <= (self.credit + 1) // 2:
            link.add_capacity(self.credit - link.capacity)


class _Token:
    """A received delivery until settled (the interface's Token)."""

    __slots__ = ("sub", "generation", "link", "handle", "settled")

    def __init__(self, sub, generation, link, handle):
        self.sub = sub
        self.generation = generation
        self.link = link
        self.handle = handle
        self.settled = False

    def settle(self, outcome):
        if self.settled:
            return False
        self.settled = True
        self.sub.engine._call_soon(lambda: self.sub._settle(self, outcome))
        return True


def _entry(text):
    """An address, or a Source sent as address SOURCE_SEP link-name SOURCE_SEP caps."""
    if SOURCE_SEP not in text:
        return text
    address, name, capabilities = text.split(SOURCE_SEP)
    return Source(address, name, tuple(capabilities.split()))


class _Sub:
    """Receiver links on some addresses, feeding one queue of records (the
    interface's Sub)."""

    def __init__(self, engine, credit):
        self.engine = engine
        self.entries = []                # addresses and Sources, the front's latest
        self.credit = credit
        self.links = {}                  # entry -> pyngus receiver
        self._queue = collections.deque()
        self._cond = threading.Condition()
        self._seq = 0
        self._unannounced = 0            # records queued, takers not yet woken
        self._stopped = False
        self.closed = False

    @property
    def id(self):
        return id(self)

    # any thread
    def set_addresses(self, addresses):
        self.entries = [_entry(a) for a in addresses]

    def subscribe(self):
        def add():
            self.engine._subscriptions.add(self)
            if self.engine._pconn is not None and self.engine._activated:
                self.attach(self.engine._pconn)
        if not self.engine._call_soon(add):
            self.stop()      # its connection is gone: nothing will ever arrive

    def take(self, max_batch):
        with self._cond:
            queue = self._queue
            if len(queue) <= max_batch:
                batch = list(queue)
                queue.clear()
            else:
                batch = [queue.popleft() for _ in range(max_batch)]
            return batch, self._seq, self._stopped

    def wait(self, seen, until):
        with self._cond:
            while self._seq == seen:
                left = until - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return self._seq

    # I/O thread
    def attach(self, pyngus_conn):
        for entry in self.entries:
            self.open_link(pyngus_conn, entry)

    def open_link(self, pyngus_conn, entry):
        """A receiver on ``entry`` (an address or a Source), kept in ``links``."""
        address = source_address(entry)
        if isinstance(entry, Source):
            name = entry.link_name
            # pyngus keeps a link's name until the link is destroyed: while a previous
            # link of this shared subscription is still closing, try again shortly.
            if name in pyngus_conn._receiver_links:
                def again():
                    if not self.closed and self.engine._pconn is pyngus_conn:
                        self.open_link(pyngus_conn, entry)
                self.engine._later(0.05, again)
                return
        else:
            name = f"fastamqp/receiver/[{address}]/{next(self.engine._ids)}"
        link = _receive_raw(pyngus_conn.create_receiver(
            address, address, event_handler=self, name=name))
        if isinstance(entry, Source):
            source = link._pn_link.source
            source.capabilities.put_array(False, proton.Data.SYMBOL)
            source.capabilities.enter()
            for capability in entry.capabilities:
                source.capabilities.put_symbol(capability)
            source.capabilities.exit()
            # The group's queue must outlive its listeners (interface.Source).
            source.expiry_policy = proton.Terminus.EXPIRE_NEVER
        link.user_context = entry
        link.add_capacity(self.credit)
        link.open()
        self.links[entry] = link

    # pyngus ReceiverEventHandler (I/O thread)
    def receiver_active(self, link):
        pass

    def receiver_remote_closed(self, link, condition):
        LOG.warning("peer detached the receiver link on %s: %s", link.user_context,
                    condition)
        self.engine._receiver_lost(self, link.user_context)

    def receiver_closed(self, link):
        _destroy_later(self.engine, link)

    def receiver_failed(self, link, error):
        self.engine._receiver_lost(self, link.user_context)

    def message_received(self, link, data, handle):
        record = (data, source_address(link.user_context),
                  _Token(self, self.engine._generation, link, handle))
        with self._cond:
            self._queue.append(record)
            self._seq += 1
            self._unannounced += 1
            if self._unannounced == 1:
                self.engine._wake_later(self._announce)

    def _announce(self):
        """Wake a taker per record queued in this turn of the I/O loop (I/O thread,
        once per turn, after the socket write: see Engine._wake_later)."""
        with self._cond:
            self._cond.notify(self._unannounced)
            self._unannounced = 0

    def _settle(self, token, outcome):
        link, handle = token.link, token.handle
        # A destroyed pyngus link has no Proton link any more (its ``closed`` raises).
        if (token.generation != self.engine._generation or link._pn_link is None
                or link.closed):
            return  # its link or connection is gone: the peer has already released it
        if outcome == ACCEPTED:
            link.message_accepted(handle)
        elif outcome == RELEASED:
            link.message_released(handle)
        elif outcome == REJECTED:
            link.message_rejected(handle)
        else:
            link.message_modified(handle, True, False, None)
        # Credit comes back only as messages are settled: unacknowledged messages are
        # the back-pressure (REFERENCE §3.6).
        if link.capacity <= (self.credit + 1) // 2:
            link.add_capacity(self.credit - link.capacity)

    def stop(self):
        with self._cond:
            self._stopped = True
            self._seq += 1
            self._cond.notify_all()

    def unsubscribe(self):
        self.stop()
        done = threading.Event()

        def detach():
            self.closed = True
            self.engine._subscriptions.discard(self)
            for link in self.links.values():
                link.close()
            self.links.clear()
            done.set()
        if self.engine._call_soon(detach):
            done.wait(5)
        else:
            self.closed = True   # the I/O thread has ended: no links left to detach


def _condition_text(condition):
    """A Proton condition as the interface carries it: "name\ndescription"."""
    if condition is None:
        return ""
    if condition.description:
        return f"{condition.name}\n{condition.description}"
    return str(condition.name)


def _close_pipe(*fds):
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


class Engine:
    """One connection with failover and its I/O thread (the interface's Engine)."""

    def __init__(self, config, hosts):
        self._config = config
        self._hosts = list(hosts)
        self._container_id = config["container_id"]
        self._retry_interval = float(config.get("retry_interval", 1))
        self._retry_backoff = float(config.get("retry_backoff", 2))
        self._retry_interval_max = float(config.get("retry_interval_max", 30))
        self._link_retry_delay = float(config.get("link_retry_delay", 10))
        self._sender_link_timeout = float(config.get("sender_link_timeout", 600) or 0)
        self._trace = bool(config.get("trace"))
        self._ids = itertools.count(1)
        self._commands = collections.deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        # Events for the front: a list, and one byte in a pipe while it is not empty.
        # The pipe lives as long as this object: the front's dispatcher may still be
        # reading it after the I/O thread has ended.
        self._events = []
        self._event_pending = False
        self._event_r, self._event_w = os.pipe()
        os.set_blocking(self._event_r, False)
        os.set_blocking(self._event_w, False)
        weakref.finalize(self, _close_pipe, self._event_r, self._event_w)
        # Guards what callers share with the I/O thread: the command queue and its
        # wake-up flag, the credit views (_views, _Sender.view and .queued), the count
        # of the send window (_held), the events and _ended.
        self._lock = threading.Lock()
        self._views = {}             # address -> _Sender whose credit callers may take
        self._wake_pending = False
        self._ended = False          # the I/O thread is gone and its pipe closed
        self._container = pyngus.Container(self._container_id)
        self._thread = None
        self._closing = False        # close() was called: callers are turned away
        self._draining = False       # ... but held sends still go out (close(drain))
        self._stopped = threading.Event()
        self._host_index = 0
        self._current_index = 0
        self._delay = self._retry_interval
        self._sock = None
        self._pconn = None
        self._generation = 0
        self._activated = False      # the links of this connection are attached
        self._sasl = (SASL_NONE, None)   # this connection's SASL outcome and mechanism
        self._senders = {}
        self._deadlines = []         # heap of (when, seq, _Send, is a fanout check)
        self._window = max(1, int(config.get("window", policy.DEFAULT_SEND_WINDOW)))
        self._held = 0               # confirmed sends taken, not yet settled (_lock)
        self._wwait = collections.deque()   # confirmed sends waiting for room
        self._stats = dict.fromkeys(
            ("waiting_for_room", "settled", "resent_released", "resent_after_loss",
             "possibly_duplicated", "rejected", "given_up", "fanout_dropped"), 0)
        self._lost_inflight = 0      # in doubt at the last loss, resent on activation
        self._opened_at = None
        self._lost_at = -1e9         # never connected: back off from the start
        self._drain_until = None
        self._resubmit = []          # in-doubt sends waiting for the next connection
        self._written = []           # pre-settled sends written since the last flush
        self._subscriptions = set()
        self._reply = _ReplyLink(self, int(config.get("reply_credit", 200)))
        self._calls = {}
        self._timers = []            # heap of (when, seq, fn)
        self._wakes = []             # callers to wake at the end of this loop turn

    # ---- lifecycle (any thread) -----------------------------------------------
    def start(self):
        self._thread = threading.Thread(
            target=self._run, daemon=True, name=f"fastamqp I/O {self._container_id}")
        self._thread.start()

    def event_fd(self):
        return self._event_r

    def take_events(self):
        with self._lock:
            events, self._events = self._events, []
            self._event_pending = False
        return events

    def activate(self, generation, reply_address):
        self._call_soon(lambda: self._activate(generation, reply_address))

    def close(self, drain=0.0):
        if self._closing:
            return
        # While draining, the I/O thread still reconnects and resends: only callers
        # are turned away.
        self._draining = drain > 0
        self._closing = True
        self._call_soon(lambda: self._drain_then_close(drain))

    def join(self, timeout):
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def stats(self):
        stats = dict(self._stats)
        stats.update(held=self._held, window=self._window)
        return stats

    # ---- operations (any thread) ----------------------------------------------
    def send(self, address, payload, presettled, deadline, retry, in_doubt_resend=True,
             flags=0):
        send = _Send(address, payload, presettled, deadline, retry, in_doubt_resend,
                     flags & SEND_CONFIRM, flags & SEND_FANOUT)
        with self._lock:
            if self._ended or self._closing:
                send.done = _TOLD_AT_ONCE
                send.res = (1, FAILED, 0, False, False, ERR_CLOSED,
                            "the connection's I/O thread has ended" if self._ended
                            else "the connection was closed")
                return send
            # A pre-settled or confirmed send on a link with credit for it (and, when
            # confirmed, room in the window) is told at once that it was taken, as in
            # the C layer: the I/O thread owns it from here on, with the same rules
            # as for one taken on the wire. Waiting for the I/O thread to say so was
            # two thread switches per cast; the original driver paid one.
            sender = self._views.get(address)
            told = False
            if sender is not None:
                # Every send queued for this link is counted, told or not: the I/O
                # thread runs them in order, and each takes a unit of its credit.
                # A confirmed send is also taken while its link is merely short of
                # credit (it has had some: a consumer exists, merely busy): it waits
                # in the window, not its caller. A link that never had credit keeps
                # the rule of any send (no consumer: an error at the deadline).
                told = (sender.view > 0 and presettled) or (
                    send.confirm and (sender.view > 0 or sender.flowing)
                    and self._held < self._window and not self._wwait)
                sender.view -= 1
                sender.queued += 1
                send.counted_by = sender
            if told:
                send.done = _TOLD_AT_ONCE
                send.res = _TAKEN
                send.taken = True
                if send.confirm:
                    send.held = True
                    self._held += 1
            else:
                send.done = threading.Event()
            self._queue_locked(lambda: self._submit(send))
        return send

    def call(self, message_id):
        call = _Call(self, message_id)
        if self._stopped.is_set():
            call.fail(ERR_CLOSED, "the connection was closed")
        else:
            self._calls[message_id] = call
        return call

    def subscription(self, credit):
        return _Sub(self, credit)

    def _post(self, kind, generation=None, index=None, remote_closed=False,
              sasl_outcome=SASL_NONE, text=None, cond_name=None, cond_desc=None,
              mech=None, props=None, tls=None, level=0):
        """An event for the front (any thread; iolayer.Engine.take_events)."""
        event = (kind, self._generation if generation is None else generation,
                 self._current_index if index is None else index, 0, remote_closed,
                 sasl_outcome, text, cond_name, cond_desc, mech,
                 {} if props is None else props, tls, level)
        with self._lock:
            self._events.append(event)
            if not self._event_pending:
                self._event_pending = True
                try:
                    os.write(self._event_w, b"x")
                except BlockingIOError:
                    pass

    def _log(self, level, fmt, *args):
        """A line for the send log (the front logs it)."""
        self._post(EV_LOG, text=fmt % args if args else fmt, level=_LOG_LEVELS[level])

    # ---- the I/O thread -------------------------------------------------------
    def _call_soon(self, fn):
        """Queue ``fn`` for the I/O thread; False if that thread has ended (its
        pipe is closed: nothing will ever run ``fn``)."""
        # One wake-up byte in the pipe at most: under eventlet a write to a full pipe
        # waits, and two green threads waiting to write the same pipe is an error.
        # The write stays under the lock so that the I/O thread cannot close the pipe
        # between the check and the write (EBADF, or a write to a reused descriptor).
        with self._lock:
            if self._ended:
                return False
            self._queue_locked(fn)
        return True

    def _queue_locked(self, fn):
        """``_call_soon`` with ``_lock`` held and the I/O thread known to be alive."""
        self._commands.append(fn)
        if not self._wake_pending:
            self._wake_pending = True
            try:
                os.write(self._wake_w, b"x")
            except BlockingIOError:
                pass

    def _later(self, delay, fn):
        heapq.heappush(self._timers, (time.monotonic() + delay, next(self._ids), fn))

    def _wake_later(self, fn):
        """Run ``fn`` (the wake-up of a waiting caller) once this turn of the I/O loop
        has written its output: a caller woken in the middle of pyngus's processing
        asks for the GIL while this thread still needs it, for the rest of the batch
        and for the write; woken after, it finds the GIL about to be free (select)."""
        self._wakes.append(fn)

    def _flush_wakes(self):
        while self._wakes:
            wakes, self._wakes = self._wakes, []
            for fn in wakes:
                fn()

    def _run(self):
        try:
            if self._sender_link_timeout > 0:
                self._later(min(self._sender_link_timeout / 2, 10.0), self._purge_senders)
            self._later(1.0, self._sweep_deadlines)
            self._connect()
            while not self._stopped.is_set():
                self._loop_once()
        except Exception:  # pragma: no cover - a bug: make it visible, then stop
            LOG.exception("fastamqp I/O thread crashed")
            self._fail_everything("the I/O thread crashed")
        finally:
            self._teardown_socket()
            with self._lock:
                self._ended = True
                os.close(self._wake_r)
                os.close(self._wake_w)
            self._post(EV_STOPPED)

    def _loop_once(self):
        now = time.monotonic()
        timeout = 1.0
        if self._timers:
            timeout = min(timeout, max(0.0, self._timers[0][0] - now))
        if self._deadlines:  # a send's deadline, or the look at a fanout's credit
            timeout = min(timeout, max(0.0, self._deadlines[0][0] - now))
        readers, writers = [self._wake_r], []
        if self._pconn is not None:
            deadline = self._pconn.deadline
            if deadline:
                timeout = min(timeout, max(0.0, deadline - now))
            if self._pconn.needs_input > 0:
                readers.append(self._sock)
            if self._pconn.has_output > 0:
                writers.append(self._sock)
        try:
            readable, writable, _ = select.select(readers, writers, [], timeout)
        except (OSError, ValueError):  # the socket was closed under us
            readable, writable = [], []
            self._connection_lost("socket error")
        if self._wake_r in readable:
            # One read only: under eventlet, os.read() on an empty pipe waits for data
            # instead of raising BlockingIOError. Read BEFORE clearing the flag: cleared
            # first, a byte written in between would be swallowed by this read while
            # the flag stayed set, and every later command would wait for the select
            # timeout (a lost wake-up).
            try:
                os.read(self._wake_r, 65536)
            except BlockingIOError:
                pass
            with self._lock:
                self._wake_pending = False
        while self._commands:
            self._commands.popleft()()
        pconn, sock = self._pconn, self._sock
        if pconn is not None:
            # Each step can end in a callback that loses the connection
            # (_connection_lost sets self._pconn to None): re-check between steps.
            try:
                if sock in readable:
                    pyngus.read_socket_input(pconn, sock)
                if self._pconn is pconn:
                    pconn.process(time.monotonic())
                if self._pconn is pconn:
                    pyngus.write_socket_output(pconn, sock)
            except (OSError, socket.error) as exc:
                self._connection_lost(f"socket error: {exc}")
            except proton.ProtonException as exc:
                self._connection_lost(f"protocol error: {exc}")
            else:
                self._flush_written()
                if self._pconn is not None and self._pconn.closed:
                    self._connection_lost("connection closed")
            finally:
                self._flush_wakes()
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            heapq.heappop(self._timers)[2]()
        self._expire_sends(now)
        self._flush_wakes()   # any a timer or a lost connection left

    def _flush_written(self):
        # Pre-settled transfers were handed to the transport before this write.
        if self._written and (self._pconn is None or self._pconn.has_output <= 0):
            for send in self._written:
                send.ended = True
                send.finish()
            self._written.clear()

    def _expire_sends(self, now):
        while self._deadlines and self._deadlines[0][0] <= now:
            _, _, send, fanout_check = heapq.heappop(self._deadlines)
            if send.ended:
                continue
            sender = self._senders.get(send.address)
            if fanout_check:
                # No credit ever on the fanout's link: nobody receives it.
                if (send.where == "waiting" and sender is not None
                        and not sender.credit_seen):
                    sender.waiting.remove(send)
                    send.where = None
                    self._drop_fanout(send)
                continue
            if send.taken:
                # On the wire, its outcome decides (a connection loss brings it back);
                # anywhere else it has had its time. A pre-settled one still not
                # written is dropped unreported, as one lost in transit would be (at
                # most once is what pre-settlement means).
                if send.presettled:
                    send.ended = True
                elif send.where != "inflight":
                    self._give_up(send, "not settled by its deadline")
                continue
            if send.done.is_set():
                continue
            starved = sender is None or not (sender.credit_seen or (
                sender.link is not None and sender.link.credit > 0))
            if send.in_wwait:
                send.fail(ERR_WINDOW)
            else:
                send.fail(ERR_NO_CREDIT if starved else ERR_TIMEOUT)

    def _sweep_deadlines(self):
        """Drop the entries of sends whose deadline can no longer matter: ended, or
        their caller told and the engine not owning them. Left until their deadline
        (a minute for a call), a busy connection's heap held that long's worth of
        sends and payloads, and the garbage collector walked them all, again and
        again."""
        live = [entry for entry in self._deadlines
                if not entry[2].ended and (entry[2].taken or not entry[2].done.is_set())]
        if len(live) < len(self._deadlines):
            heapq.heapify(live)
            self._deadlines = live
        self._later(1.0, self._sweep_deadlines)

    # ---- connection management (I/O thread) -----------------------------------
    def _connection_props(self, host):
        """pyngus' properties for a connection to ``host`` (iolayer.Engine: a tuple),
        SASL and TLS made for THIS host on every connection."""
        hostname, _, user, password, mechs, peer_name = host
        config = self._config
        props = {"properties": dict(config.get("properties") or ())}
        if config.get("vhost"):
            props["hostname"] = config["vhost"]
        if config.get("idle_timeout"):
            props["idle-time-out"] = float(config["idle_timeout"])
        if self._trace and not password:
            # With a password, tracing starts after SASL (sasl_done): the frame trace
            # would print the PLAIN initial response, i.e. the password.
            props["x-trace-protocol"] = True
        sasl = {}
        if user:
            sasl["x-username"] = user
            sasl["x-password"] = password or ""
        if mechs:
            sasl["x-sasl-mechs"] = mechs
        if config.get("sasl_config_dir"):
            sasl["x-sasl-config-dir"] = config["sasl_config_dir"]
        if config.get("sasl_config_name"):
            sasl["x-sasl-config-name"] = config["sasl_config_name"]
        if not sasl:
            sasl["x-force-sasl"] = True   # e.g. EXTERNAL with only a certificate
        props.update(sasl)
        if config.get("tls"):
            props.update({"x-ssl-ca-file": config.get("ca_file"),
                          "x-ssl-verify-mode": "verify-peer",
                          "x-ssl-peer-name": peer_name or hostname})
            if config.get("cert_file"):
                props["x-ssl-identity"] = (config["cert_file"],
                                           config.get("key_file") or config["cert_file"],
                                           config.get("key_password"))
        return props

    def _connect(self):
        if self._shutting_down:
            return
        index = self._host_index % len(self._hosts)
        host = self._hosts[index]
        self._host_index += 1
        self._generation += 1
        self._current_index = index
        self._sasl = (SASL_NONE, None)
        props = self._connection_props(host)
        try:
            sock = socket.create_connection((host[0], host[1]), timeout=10)
        except OSError as exc:
            self._post(EV_LOST, text=f"cannot connect to {host[0]}:{host[1]}: {exc}")
            self._schedule_reconnect()
            return
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        try:
            pconn = self._container.create_connection(
                f"fastamqp-{self._generation}", self, props)
        except (proton.SSLException, proton.SSLUnavailable) as exc:
            sock.close()
            # set_credentials failed: wrong file or key password (or no TLS at all).
            self._post(EV_CONFIG_FAILED, text=f"TLS configuration error: {exc}")
            self._schedule_reconnect()
            return
        self._sock = sock
        self._pconn = pconn
        self._pconn.user_context = host
        self._pconn.open()

    def _schedule_reconnect(self):
        if self._shutting_down:
            return
        delay = self._delay
        # After the immediate attempt: every retry_interval while the outage is young
        # (policy.RECONNECT_STEADY), then multiplied, as the original driver did (its
        # help text said "added"), up to retry_interval_max.
        if delay <= 0:
            self._delay = self._retry_interval
        elif time.monotonic() - self._lost_at >= policy.RECONNECT_STEADY:
            self._delay = delay * self._retry_backoff
        self._delay = min(self._delay, self._retry_interval_max)
        self._later(max(delay, 0.01), self._connect)

    def _teardown_socket(self):
        if self._pconn is not None:
            try:
                self._pconn.destroy()
            except Exception:  # pyngus can raise while destroying a failed connection
                pass
            self._pconn = None
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
            self._sock = None

    def _connection_lost(self, reason):
        if self._pconn is None:
            return
        self._post_lost(reason)
        # A connection that had been up a while is tried again at once: a peer that
        # restarts quickly is found on the first attempt, not a back-off later. One
        # that failed soon after it opened keeps the back-off (no reconnection storm).
        if (self._opened_at is not None
                and time.monotonic() - self._opened_at >= self._retry_interval):
            self._delay = 0
            self._lost_at = time.monotonic()
        self._opened_at = None
        self._activated = False
        self._teardown_socket()
        # Calls in flight lose their reply route with the reply link.
        for call in list(self._calls.values()):
            call.fail(ERR_LOST, f"connection lost: {reason}")
        # Sends whose outcome is unknown go again on the next connection, while their
        # budget and deadline allow, in the order they were sent: those in flight
        # first; then those that never left (no credit yet), which are not in doubt
        # and wait for credit again. A pre-settled one not yet written goes again too.
        for sender in self._senders.values():
            for send in list(sender.in_flight.values()):
                send.where = None
                self._leave_wwait(send)
                if send.done.is_set() and not send.taken:
                    continue
                if send.in_doubt_resend and send.may_retry():
                    self._resubmit.append(send)
                    self._lost_inflight += 1
                else:
                    self._fail(send, f"connection lost before the peer settled the "
                                     f"message to {send.address}, and its retries are "
                                     f"spent")
            for send in sender.waiting:
                send.where = None
                if send.taken or not send.done.is_set():
                    self._resubmit.append(send)
        # Pre-settled sends handed to the transport but perhaps not to the socket.
        for send in self._written:
            if send.in_doubt_resend and send.may_retry():
                self._resubmit.append(send)
            else:
                send.fail(ERR_SEND_FAILURE, f"connection lost while writing the message "
                                            f"to {send.address}")
        self._written.clear()
        with self._lock:
            for sender in self._senders.values():
                sender.retire()
        self._senders.clear()
        if self._shutting_down:
            self._finish_close()
            return
        self._schedule_reconnect()

    def _purge_senders(self):
        """Detach sender links idle for longer than sender_link_timeout."""
        timeout = self._sender_link_timeout
        now = time.monotonic()
        for address, sender in list(self._senders.items()):
            if sender.idle and sender.link is not None and now - sender.last_used > timeout:
                with self._lock:
                    sender.retire()
                del self._senders[address]
                sender.link.close()
        self._later(min(timeout / 2, 10.0), self._purge_senders)

    def _drain_then_close(self, drain):
        """Close once the peer has settled the confirmed sends held, or after
        ``drain`` seconds, saying what was given up."""
        if self._drain_until is None:
            self._drain_until = time.monotonic() + drain
        if self._held and time.monotonic() < self._drain_until:
            self._later(0.02, lambda: self._drain_then_close(drain))
            return
        if self._held:
            self._log("warning", "closing with %d confirmed message(s) the peer has not "
                      "settled after %.1f s: given up", self._held, drain)
        self._begin_close()

    @property
    def _shutting_down(self):
        """Closing, and no longer draining confirmed sends (I/O thread)."""
        return self._closing and not self._draining

    def _begin_close(self):
        self._draining = False
        self._closing = True
        for sub in list(self._subscriptions):
            sub.stop()
        if self._pconn is not None and self._activated:
            self._pconn.close()
            self._later(2.0, self._finish_close)  # do not wait forever for the peer
        else:
            self._finish_close()

    def _finish_close(self):
        self._fail_everything("the connection was closed")
        self._stopped.set()

    def _fail_everything(self, text):
        for call in list(self._calls.values()):
            call.fail(ERR_CLOSED, text)
        for _, _, send, _ in self._deadlines:
            send.fail(ERR_CLOSED, text)
        for send in self._resubmit:
            send.fail(ERR_CLOSED, text)
        for sub in list(self._subscriptions):
            sub.stop()

    def _submit(self, send):
        if send.counted_by is not None:
            send.counted_by.uncount()
            send.counted_by = None
        if send.ended:
            return
        if self._shutting_down and not send.taken:
            send.fail(ERR_CLOSED, "the connection is closing")
            return
        if send.done.is_set() and not send.taken:
            return  # timed out while waiting for a connection or a retry
        heapq.heappush(self._deadlines, (send.deadline, next(self._ids), send, False))
        sender = self._senders.get(send.address)
        if sender is None:
            sender = self._senders[send.address] = _Sender(self, send.address)
            if self._pconn is not None and self._activated:
                sender.attach(self._pconn)
        sender.submit(send)

    def _sender_lost(self, sender, reason):
        if self._senders.get(sender.address) is not sender:
            return
        with self._lock:
            sender.retire()
        del self._senders[sender.address]
        try:
            sender.link.close()
        except Exception:
            pass
        for send in list(sender.in_flight.values()) + list(sender.waiting):
            send.where = None
            self._leave_wwait(send)
            if send.done.is_set() and not send.taken:
                continue
            if send.may_retry():
                self._later(self._link_retry_delay, lambda s=send: self._submit(s))
            else:
                self._fail(send, f"the peer detached the link to {sender.address}: "
                                 f"{reason}")

    def _receiver_lost(self, sub, entry):
        link = sub.links.pop(entry, None)
        if link is not None:
            try:
                link.close()
            except Exception:
                pass

        def reattach():
            if sub.closed or self._pconn is None or not self._activated:
                return
            sub.open_link(self._pconn, entry)
        self._later(self._link_retry_delay, reattach)

    # ---- confirmed sends and the send window (I/O thread) -------------------------
    def _take_or_wait(self, send):
        """A confirmed send has just gone on the wire: take it into the window, or
        let its caller wait for room (or for its own outcome)."""
        if send.done.is_set():
            return
        with self._lock:
            room = self._held < self._window
            if room:
                self._held += 1
        if room:
            send.held = send.taken = True
            send.finish()
        else:
            send.in_wwait = True
            self._stats["waiting_for_room"] += 1
            self._wwait.append(send)

    def _leave_wwait(self, send):
        if send.in_wwait:
            send.in_wwait = False
            self._stats["waiting_for_room"] -= 1

    def _release(self, send):
        """The engine is finished with ``send``; the oldest send waiting for room
        takes its place in the window."""
        send.ended = True
        if not send.held:
            return
        send.held = False
        # The room passes straight to the oldest send waiting for it: were it freed
        # first, a caller taking the fast path in send() could have it instead.
        while self._wwait:
            waiting = self._wwait.popleft()
            if waiting.in_wwait:
                self._leave_wwait(waiting)
                if not waiting.done.is_set():   # not told of its deadline
                    waiting.held = waiting.taken = True
                    waiting.finish()
                    return
        with self._lock:
            self._held -= 1

    def _fail(self, send, text):
        """``send`` will not go out (again). Its caller hears why (a send failure);
        one whose caller was already released is logged and counted instead."""
        if send.taken:
            self._give_up(send, text)
        else:
            send.fail(ERR_SEND_FAILURE, text)
            self._release(send)

    def _give_up(self, send, why):
        self._stats["given_up"] += 1
        self._log("error", "gave up on a message to %s: %s", send.address, why)
        self._release(send)

    def _confirmed_outcome(self, send, outcome, info):
        """The peer settled a confirmed send whose caller has gone on."""
        if outcome == ACCEPTED:
            self._stats["settled"] += 1
            self._release(send)
            return
        # Released, or modified without undeliverable-here: it goes again. Modified
        # with delivery-failed means a consumer had it (qdrouterd says so when the
        # consumer's link went away before settling): the copy sent again may be a
        # duplicate, and is counted as one.
        if outcome == RELEASED or (outcome == MODIFIED
                                   and not info.get("undeliverable-here")):
            pause = policy.released_pause(send.attempts, self._link_retry_delay)
            send.attempts += 1
            if time.monotonic() + pause < send.deadline and send.may_retry():
                self._stats["resent_released"] += 1
                if outcome == MODIFIED and info.get("delivery-failed"):
                    self._stats["possibly_duplicated"] += 1
                self._later(pause, lambda: self._submit(send))
                return
            self._give_up(send, f"the peer {'released' if outcome == RELEASED else 'modified'}"
                                f" it until its deadline or its retries were spent")
            return
        condition = info.get("condition")
        self._stats["rejected"] += 1
        self._log("error", "the peer %s a message to %s: %s",
                  "rejected" if outcome == REJECTED
                  else "refused (modified, undeliverable)", send.address,
                  f"{condition.name}: {condition.description}"
                  if condition is not None else "no condition")
        self._release(send)

    def _drop_fanout(self, send):
        """A fanout nobody receives (fastamqp.engine.policy.FANOUT_CREDIT_WAIT): its caller
        hears success, as from the original driver and the rabbit driver."""
        self._stats["fanout_dropped"] += 1
        self._log("debug", "fanout to %s dropped: it has no receiver (the peer gave the "
                  "link no credit)", send.address)
        send.finish()
        self._release(send)

    def _check_fanout_at(self, when, send):
        if when < send.deadline:
            heapq.heappush(self._deadlines, (when, next(self._ids), send, True))

    # ---- pyngus ConnectionEventHandler (I/O thread) ----------------------------
    def connection_active(self, pconn):
        if pconn.pn_connection.state & proton.Endpoint.REMOTE_CLOSED:
            # Open and Close(error) arrived together: how a peer refuses a connection
            # after SASL (e.g. a policy or a user it does not know). Not active.
            return
        props = pconn.remote_properties or {}
        mech = pconn.pn_sasl.mech if pconn.pn_sasl is not None else None
        tls = None
        ssl_session = getattr(pconn, "_pn_ssl", None)   # pyngus keeps it there
        if ssl_session is not None:
            tls = (ssl_session.remote_subject, ssl_session.protocol_name(),
                   ssl_session.cipher_name())
        self._delay = self._retry_interval
        self._opened_at = time.monotonic()
        self._post(EV_OPENED, text=pconn.remote_container, mech=mech or None,
                   props={str(k): v for k, v in props.items()}, tls=tls)

    def _activate(self, generation, reply_address):
        """Attach the links of this connection (iolayer.Engine.activate)."""
        if (generation != self._generation or self._pconn is None or self._activated
                or self._shutting_down):
            return
        pconn = self._pconn
        self._activated = True
        # Calls registered while the last connection was being lost missed the
        # failure of _connection_lost, and their requests carry a reply address that
        # is gone: fail them now rather than let them wait for their deadline.
        for call in list(self._calls.values()):
            if call.generation < generation:
                call.fail(ERR_LOST, "connection lost while the call was being sent")
        self._reply.attach(pconn, reply_address)
        for sub in self._subscriptions:
            sub.links.clear()
            sub.attach(pconn)
        resubmit, self._resubmit = self._resubmit or [], []
        if self._lost_inflight:
            self._log("info", "sending again %d message(s) that were not settled when "
                      "the last connection was lost (at least once: the peer may have "
                      "had them)", self._lost_inflight)
            self._stats["resent_after_loss"] += self._lost_inflight
            self._stats["possibly_duplicated"] += self._lost_inflight
            self._lost_inflight = 0
        self._post(EV_ACTIVE)
        for send in resubmit:
            self._submit(send)
        for sender in self._senders.values():
            if sender.link is None:
                sender.attach(pconn)

    def _post_lost(self, reason):
        """EV_LOST for the current connection, with what classifies it (as the C
        layer): the SASL outcome, and the peer's Close condition when it sent one,
        else the transport's."""
        pconn = self._pconn
        remote_closed, condition = False, None
        try:
            remote_closed = bool(pconn.pn_connection.state & proton.Endpoint.REMOTE_CLOSED)
            if remote_closed:
                condition = pconn.pn_connection.remote_condition
            if condition is None and pconn.pn_transport is not None:
                condition = pconn.pn_transport.condition
        except Exception:  # a connection pyngus has half destroyed: no details
            LOG.debug("no details of the lost connection", exc_info=True)
        outcome, mech = self._sasl
        self._post(EV_LOST, remote_closed=remote_closed, sasl_outcome=outcome,
                   text=reason,
                   cond_name=str(condition.name) if condition is not None else None,
                   cond_desc=condition.description if condition is not None else None,
                   mech=mech)

    def connection_failed(self, pconn, error):
        self._connection_lost(f"connection failed: {error}")

    def connection_remote_closed(self, pconn, condition):
        pconn.close()
        self._connection_lost(f"peer closed the connection: {condition}")

    def connection_closed(self, pconn):
        self._connection_lost("connection closed")

    def sender_requested(self, *args, **kwargs):
        pass  # we never accept links the peer opens

    def receiver_requested(self, *args, **kwargs):
        pass

    def sasl_step(self, pconn, pn_sasl):
        pass

    def sasl_done(self, pconn, pn_sasl, result):
        self._sasl = (result, pn_sasl.mech or None)
        if result == proton.SASL.OK and self._trace and pconn.user_context[3]:
            pconn.pn_transport.trace(proton.Transport.TRACE_FRM)
