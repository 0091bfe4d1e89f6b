"""The engine interface: what the driver asks of a connection engine.

Both engines -- the C one (``engine.c.connection``, native I/O thread) and the
pure-Python reference (``engine.pure.connection``, on pyngus) -- implement
:class:`Connection`, with one front (``engine.front``) over two I/O layers. The driver speaks
only this interface and AMQP message bytes from ``fastamqp.codec``; it never sees a
Proton or pyngus object. All methods are safe to call from any thread.

Threading contract: each engine runs one I/O thread per connection. Calls from other
threads queue work for it and wait (for the C engine, with the GIL released).
Deadlines are ``time.monotonic()`` values.
"""
import dataclasses
import enum
from typing import Callable, Optional, Protocol, Sequence

from fastamqp.engine import policy


class Outcome(str, enum.Enum):
    """The terminal delivery states of AMQP 1.0 (part 3.4)."""

    ACCEPTED = "accepted"
    RELEASED = "released"
    MODIFIED = "modified"
    REJECTED = "rejected"


@dataclasses.dataclass(frozen=True)
class SendResult:
    """How the peer settled a message. Pre-settled sends report ACCEPTED once the
    message is as good as written: on a link with credit for it. Confirmed sends
    report ACCEPTED once the engine has taken the message (see Connection.send)."""

    outcome: Outcome
    delivery_failed: bool = False       # MODIFIED only
    undeliverable_here: bool = False    # MODIFIED only
    condition: Optional[str] = None     # REJECTED: the error condition, e.g. amqp:not-found
    description: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class Host:
    hostname: str = "localhost"
    port: int = 5672
    username: Optional[str] = None
    password: Optional[str] = dataclasses.field(default=None, repr=False)

    def __repr__(self):  # never the password: reprs end up in logs
        user = f"{self.username}:****@" if self.username else ""
        return f"Host({user}{self.hostname}:{self.port})"


@dataclasses.dataclass(frozen=True)
class ConnectionSettings:
    """What shapes a connection; built by the driver from [oslo_messaging_amqp]."""

    container_id: str
    properties: dict = dataclasses.field(default_factory=dict)   # Open properties
    virtual_host: Optional[str] = None    # sent as Open hostname (pseudo_vhost=False)
    idle_timeout: float = 0
    retry_interval: float = 1
    retry_backoff: float = 2
    retry_interval_max: float = 30
    link_retry_delay: float = 10
    # A sender link with nothing to send for this long is detached (the original's
    # default_sender_link_timeout); 0 keeps sender links for the connection's life.
    sender_link_timeout: float = 600
    reply_link_credit: int = 200
    # Confirmed sends (Connection.send(confirm=True)) the connection holds at most
    # until the peer settles them; while it is full, such a send waits.
    send_window: int = policy.DEFAULT_SEND_WINDOW
    # Where replies arrive. None, or a function of the PeerInfo returning None: a
    # receiver with a dynamic source (the peer assigns the address). A function
    # returning an address: a receiver on that named source, for peers without
    # dynamic sources (RabbitMQ). Called again on every (re)connection.
    reply_source: Optional[Callable[["PeerInfo"], Optional[str]]] = None
    # Called on every (re)connection once the peer's Open has arrived and before any
    # link attaches (RabbitMQ 4: declaring the queues the links name), on a thread of
    # its own, never the I/O thread; links wait until it returns. While it raises,
    # the engine tries again with the reconnection back-off; an exception with a true
    # ``refused`` attribute is what wait_active raises meanwhile.
    prepare: Optional[Callable[["PeerInfo"], None]] = None
    trace: bool = False
    # SASL. The user name and password come from each Host (the driver has already
    # appended sasl_default_realm to user names without a realm).
    sasl_mechanisms: str = ""             # space separated; empty: PLAIN/ANONYMOUS/...
    sasl_config_dir: Optional[str] = None     # Cyrus configuration directory
    sasl_config_name: Optional[str] = None    # Cyrus configuration name (no .conf)
    # TLS: on when ssl is True or a CA or client certificate file is given. The
    # server certificate is always verified, against ssl_ca_file or else the system
    # CAs, and so is its name: the name of the host being connected to, or
    # ssl_peer_name when set (the driver sets it to the URL's virtual host when
    # ssl_verify_vhost is on).
    ssl: bool = False
    ssl_ca_file: Optional[str] = None
    ssl_cert_file: Optional[str] = None   # client certificate (SASL EXTERNAL)
    ssl_key_file: Optional[str] = None    # its private key (None: in ssl_cert_file)
    ssl_key_password: Optional[str] = dataclasses.field(default=None, repr=False)
    ssl_peer_name: Optional[str] = None

    @property
    def tls(self) -> bool:
        return bool(self.ssl or self.ssl_ca_file or self.ssl_cert_file)


@dataclasses.dataclass(frozen=True)
class TLSInfo:
    """The TLS session of a connection: the peer certificate's subject, protocol and
    cipher as the TLS library names them."""

    subject: Optional[str]
    protocol: Optional[str]
    cipher: Optional[str]


@dataclasses.dataclass(frozen=True)
class PeerInfo:
    """Who we are connected to (the remote Open)."""

    host: Host
    container_id: Optional[str]
    properties: dict
    sasl_mechanism: Optional[str] = None   # the SASL mechanism we logged in with
    tls: Optional["TLSInfo"] = None          # None: not TLS

    @property
    def product(self):
        return self.properties.get("product")

    @property
    def version(self):
        return self.properties.get("version")


# The source capabilities of a shared subscription. "shared": the subscription may
# have several consuming links, each message going to one of them; "global": its
# identity is the link name alone, not scoped to our container id (every process
# has its own); "topic": the address names a topic (exchange), so a broker that has
# a queue of the same name does not pick the queue.
SHARED_SUBSCRIPTION = ("shared", "global", "topic")


@dataclasses.dataclass(frozen=True)
class Source:
    """A receiver source that is a shared subscription to a topic, not a plain
    address: what a notification pool consumes from.

    The subscription is named by ``link_name``. qpidd (qpid-cpp 0.34 and later,
    broker/amqp/Session.cpp) makes a receiver on an exchange with the ``shared``
    source capability consume from a subscription queue named after the link name
    alone, created by the first such link and shared by every link of that name from
    any connection; without it each link gets a private queue. The source asks never
    to expire, so the queue keeps what arrives while the group has no member attached.
    The link name is used as given: two shared links of one name must not share a
    connection (AMQP link names are unique per connection and direction).
    """

    address: str
    link_name: str
    capabilities: tuple = SHARED_SUBSCRIPTION


def source_address(entry) -> str:
    """The address of a subscription entry (a str or a :class:`Source`)."""
    return entry.address if isinstance(entry, Source) else entry


@dataclasses.dataclass
class Delivery:
    """A message received on a subscription, until settled."""

    payload: bytes
    address: str
    token: object = dataclasses.field(repr=False, default=None)  # engine's handle


class Subscription(Protocol):
    """Receiver links on a set of addresses feeding one queue (an oslo listener)."""

    addresses: Sequence[str]

    def poll(self, max_batch: int, timeout: Optional[float]) -> list: ...
    def settle(self, delivery: Delivery, outcome: Outcome) -> None: ...
    def stop(self) -> None: ...    # unblock poll(); no more deliveries
    def close(self) -> None: ...   # detach the links


class ReplyWaiter(Protocol):
    def wait(self, deadline: float, monitor_timeout: Optional[float] = None) -> bytes: ...
    def cancel(self) -> None: ...


class Connection(Protocol):
    """One AMQP 1.0 connection with failover over ``hosts``, run by its own I/O thread.

    Subscriptions and the reply link come back by themselves after a reconnection.
    """

    def start(self) -> None: ...
    def wait_active(self, timeout: float) -> PeerInfo: ...
    @property
    def peer(self) -> Optional[PeerInfo]: ...    # the last peer, even while reconnecting
    @property
    def active(self) -> bool: ...                # connected and open right now
    def close(self, timeout: float = 30.0, drain: float = 0.0) -> None:
        """Close, first waiting up to ``drain`` seconds (within ``timeout``) for the
        peer to settle the confirmed sends the connection holds; what is left is
        logged."""

    def statistics(self) -> dict:
        """Counters of confirmed and fanout sends: held (the window in use), window,
        waiting_for_room, settled, resent_released, resent_after_loss,
        possibly_duplicated, rejected, given_up, fanout_dropped."""

    def send(self, address: str, payload: bytes, *, presettled: bool, deadline: float,
             retry: Optional[int] = None, in_doubt_resend: bool = True,
             confirm: bool = False, fanout: bool = False) -> SendResult:
        """``retry``: how often the send may go again (a link re-attached, a message
        in doubt at a connection loss, a released one); None: no limit.
        ``in_doubt_resend=False``: a message whose outcome is unknown when the
        connection drops fails instead of going again (an RPC request: running a
        method twice is worse than an error).

        ``confirm=True`` (unsettled sends only): do not wait for the outcome. The
        send returns ACCEPTED once the engine has taken the message -- on the wire, or
        on a link with credit for it, and within the connection's send window -- and
        the engine keeps it until the peer settles it: released, or modified without
        undeliverable-here, it goes again after a short, growing pause (fastamqp.engine.policy) while its
        deadline and ``retry`` allow; rejected, it is logged and counted; in doubt at
        a connection loss, it goes again on the next connection before newer sends
        (at least once). Until taken, the rules are those of any send: no credit by
        the deadline raises SendTimeout. While the window is full the caller waits
        for room or for the message's own outcome, whichever comes first.

        ``fanout=True``: the address is a multicast one; a fanout waiting for credit
        on a link that has never had any (a router with nobody subscribed) is dropped
        and counted after fastamqp.engine.policy.FANOUT_CREDIT_WAIT, and the send returns
        ACCEPTED."""

    def reply_address(self, deadline: float) -> str: ...
    def expect_reply(self, message_id: str) -> ReplyWaiter: ...

    def subscribe(self, addresses, credit: int) -> Subscription:
        """Receiver links with ``credit`` each. ``addresses`` is a list, or a function
        of the PeerInfo returning one, called again on every (re)connection; each
        entry an address or a :class:`Source`. A delivery's ``address`` is its
        source's address."""
