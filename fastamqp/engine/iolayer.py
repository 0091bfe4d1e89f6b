"""The I/O-layer interface: what the connection front (``fastamqp.engine.front``) asks of
the thread that moves frames.

Two modules implement it with one object model: ``fastamqp.engine.c._io`` (Cython over
the native I/O thread of ``engine/c/fa_io.c``) and ``fastamqp.engine.pure.io`` (pure
Python on pyngus). The front -- waits, reply correlation with the call monitor,
subscriptions whose addresses depend on the peer, the errors callers see and the
classification of a lost connection -- is written once over this interface; an I/O
layer decides nothing a caller can see except through the codes below. The contract
tests (tests/engine/test_io_contract.py) run the same traffic against both.

An I/O-layer module exports:

* the constants of :data:`TABLE` under the same names, with the same values (a test
  checks ``_io`` against this table; the pure layer imports it);
* ``GREEN_WAITS``: True when the ``wait()`` of its objects lets other green threads run
  in a process monkey-patched by eventlet (pure Python on green locks). False (C: a wait
  blocks the OS thread, GIL released): under eventlet the front asks for ``EV_WAKE``
  events (config ``green``) and waits on green Events its dispatcher sets;
* :class:`Engine` and the objects it makes, described by the Protocols below.

Waiting. Every shared object has a sequence number that changes whenever its state
does; ``state()``/``result()``/``take()`` return it, and ``wait(seq, until)`` returns
once it differs from ``seq`` or at ``until`` (a ``time.monotonic()`` value), with the
new sequence number. A caller reads, decides, and waits on what it read: a change in
between is never lost.
"""
from typing import Optional, Protocol, Sequence

# ---- The shared constants: one table (fa_io.h has the same numbers) ------------------

# The state of an Op (Op.result) and of a Call (Call.state).
PENDING, DONE, FAILED = 0, 1, 2

# How the peer settled a send, and how a received delivery is settled (Token.settle):
# the terminal delivery states of AMQP 1.0.
ACCEPTED, RELEASED, MODIFIED, REJECTED = 1, 2, 3, 4

# Why an Op or a Call FAILED. The front turns them into exceptions: ERR_TIMEOUT and
# ERR_NO_CREDIT (no credit ever: through a router, no consumer) and ERR_WINDOW (the
# send window stayed full) into SendTimeout, ERR_SEND_FAILURE into SendFailure (the
# text says why), ERR_LOST into ConnectionFailed, ERR_CLOSED into EngineClosed.
ERR_NONE, ERR_TIMEOUT, ERR_NO_CREDIT, ERR_SEND_FAILURE = 0, 1, 2, 3
ERR_CLOSED, ERR_LOST, ERR_WINDOW = 4, 5, 6

# The kinds of the events Engine.take_events returns (see Engine.take_events).
EV_OPENED, EV_ACTIVE, EV_REPLY_READY, EV_LOST = 1, 2, 3, 4
EV_CONFIG_FAILED, EV_STOPPED, EV_WAKE, EV_LOG = 5, 6, 7, 8

# Engine.send flags (fastamqp.engine.interface.Connection.send: confirm, fanout).
SEND_CONFIRM, SEND_FANOUT = 1, 2

TABLE = {
    "PENDING": PENDING, "DONE": DONE, "FAILED": FAILED,
    "ACCEPTED": ACCEPTED, "RELEASED": RELEASED, "MODIFIED": MODIFIED,
    "REJECTED": REJECTED,
    "ERR_NONE": ERR_NONE, "ERR_TIMEOUT": ERR_TIMEOUT, "ERR_NO_CREDIT": ERR_NO_CREDIT,
    "ERR_SEND_FAILURE": ERR_SEND_FAILURE, "ERR_CLOSED": ERR_CLOSED,
    "ERR_LOST": ERR_LOST, "ERR_WINDOW": ERR_WINDOW,
    "EV_OPENED": EV_OPENED, "EV_ACTIVE": EV_ACTIVE, "EV_REPLY_READY": EV_REPLY_READY,
    "EV_LOST": EV_LOST, "EV_CONFIG_FAILED": EV_CONFIG_FAILED,
    "EV_STOPPED": EV_STOPPED, "EV_WAKE": EV_WAKE, "EV_LOG": EV_LOG,
    "SEND_CONFIRM": SEND_CONFIRM, "SEND_FANOUT": SEND_FANOUT,
}

# A shared subscription (fastamqp.engine.interface.Source) travels to the I/O layer as
# one string: address, link name and space-separated capabilities joined by this.
SOURCE_SEP = "\x1f"

# Proton's SASL outcomes (pn_sasl_outcome_t), as EV_LOST carries them.
SASL_NONE, SASL_OK, SASL_AUTH = -1, 0, 1


# ---- The object model ----------------------------------------------------------------

class Op(Protocol):
    """One send, until it has a result. A send the I/O layer can complete without its
    thread (pre-settled, or confirmed within the window, on a link with credit for it)
    is DONE when Engine.send returns it."""

    id: int     # names the op in EV_WAKE events

    def result(self) -> tuple:
        """(seq, state, outcome, delivery_failed, undeliverable_here, error, text):
        when DONE, ``outcome`` is ACCEPTED..REJECTED and ``text`` the peer's
        condition as "name\\ndescription" (or ""); when FAILED, ``error`` is an ERR_*
        code and ``text`` says why."""

    def wait(self, seq: int, until: float) -> int: ...

    def abandon(self, error: int, text: str) -> None:
        """FAILED with ``error`` unless it has a result already (a caller that will
        not wait longer)."""


class Call(Protocol):
    """A reply correlation, registered with the I/O layer from its creation: a reply
    whose correlation-id is the message id completes it; a reply without a body is a
    heartbeat and counts. A reply nobody claims is settled modified (delivery-failed,
    undeliverable-here)."""

    id: int

    def state(self) -> tuple:
        """(seq, state, heartbeats, error, text)."""

    def take_reply(self) -> Optional[bytes]: ...
    def wait(self, seq: int, until: float) -> int: ...
    def cancel(self) -> None: ...     # unregister; a later reply is not claimed


class Token(Protocol):
    """A received delivery, until settled."""

    def settle(self, outcome: int) -> bool:
        """Settle with ACCEPTED..REJECTED (MODIFIED: delivery-failed); False when it
        was settled already. A token dropped unsettled is released by the peer when
        its link or connection goes."""


class Sub(Protocol):
    """Receiver links on a set of addresses feeding one queue of records. Its links
    are attached at every activation (and at subscribe() when active), with the
    addresses set last."""

    id: int

    def set_addresses(self, addresses: Sequence[str]) -> None:
        """Each an address, or a Source as address SOURCE_SEP link-name SOURCE_SEP
        capabilities."""

    def subscribe(self) -> None: ...       # attach now if active, and on every activation
    def take(self, max_batch: int) -> tuple:
        """(records, seq, stopped); a record is (payload, source address, Token)."""

    def wait(self, seq: int, until: float) -> int: ...
    def stop(self) -> None: ...            # take() says stopped; nothing more arrives
    def unsubscribe(self) -> None: ...     # detach the links


class Engine(Protocol):
    """One connection with failover, and the thread that runs it.

    ``Engine(config, hosts)``. ``config`` (a dict): container_id, vhost, properties
    (a list of (key, value) strings), idle_timeout, retry_interval, retry_backoff,
    retry_interval_max, link_retry_delay, sender_link_timeout, reply_credit, trace,
    sasl_config_dir, sasl_config_name, tls, ca_file, cert_file, key_file,
    key_password, green, window. ``hosts``: a list of (hostname, port, user,
    password, sasl_mechanisms, tls_peer_name), any but the first two None.

    The thread connects to the hosts in turn, with the back-off of
    fastamqp.engine.policy; after a peer's Open it posts EV_OPENED and waits for
    ``activate`` before attaching the reply link and the subscriptions and sending
    again what was in doubt.
    """

    def start(self) -> None: ...

    def event_fd(self) -> int:
        """A file descriptor that becomes readable when there are events (a pipe: read
        it, then call take_events)."""

    def take_events(self) -> list:
        """The events since the last call, oldest first, as tuples (kind, generation,
        host index, wake_id, remote_closed, sasl_outcome, text, cond_name, cond_desc,
        mech, properties, tls, level):

        * EV_OPENED: the peer's Open; text its container id, properties its Open
          properties, mech the SASL mechanism, tls None or (subject, protocol,
          cipher). ``generation`` names the connection in ``activate``;
        * EV_ACTIVE: the links of the generation are attached (after activate);
        * EV_REPLY_READY: text is the reply address;
        * EV_LOST: an attempt failed or a connection went: text says why;
          sasl_outcome (SASL_*), cond_name/cond_desc (the peer's Close condition when
          remote_closed, else the transport's) and mech classify it;
        * EV_CONFIG_FAILED: the TLS credentials (client certificate, key, CA file)
          could not be loaded;
        * EV_LOG: a line for the send log (what happened to sends whose callers had
          gone on) at logging level ``level``;
        * EV_WAKE: (config green only) the object whose id is wake_id changed;
        * EV_STOPPED: the thread has ended; the last event.
        """

    def activate(self, generation: int, reply_address: Optional[str]) -> None:
        """Attach the links of connection ``generation`` (ignored if that one is
        gone); the reply link on ``reply_address``, or on a dynamic source if None."""

    def close(self, drain: float) -> None:
        """Close, first waiting up to ``drain`` seconds for the peer to settle the
        confirmed sends held; the thread ends with EV_STOPPED."""

    def stats(self) -> dict: ...      # interface.Connection.statistics
    def join(self, timeout: float) -> bool: ...   # True once the thread has ended

    def send(self, address: str, payload: bytes, presettled: bool, deadline: float,
             retry: int, in_doubt_resend: bool, flags: int) -> Op:
        """``retry`` -1: no limit. See interface.Connection.send."""

    def call(self, message_id: str) -> Call: ...
    def subscription(self, credit: int) -> Sub: ...
