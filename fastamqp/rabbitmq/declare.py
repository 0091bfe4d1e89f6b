"""The queues fastamqp declares on RabbitMQ, and when (fastamqp.addressing.rabbitmq
names them).

Declarations never run on an engine's I/O thread: the engines call
``ConnectionSettings.prepare`` (:meth:`Declarer.prepare`) from a thread of their own
once the peer's Open has arrived and attach no link before it returns; a listener
declares its queues from the caller's thread before it subscribes, a notifier before
its first notification to a topic on each connection. RabbitMQ 4 declarations go
through its AMQP 1.0 management node (fastamqp.rabbitmq.management); notification
pool queues on 3.x over AMQP 0-9-1 (:func:`declare_groups`).
"""
import ssl
import threading
import uuid

from fastamqp import exceptions
from fastamqp.addressing.rabbitmq import (DECLARE_TIMEOUT, REPLY_QUEUE_PREFIX, QueueSpec,
                                          RabbitMQAddresser, _bound, is_rabbitmq,
                                          uses_v2, v1_queue, v2_queue, wanted)


class QueuePlan:
    """The queues one subscription (or notifier) needs, for the peer of the moment.

    ``specs_for(addresser, token)`` gives them; ``token`` is new for every connection
    (every PeerInfo), so a queue of a connection's own gets a fresh name each time: a
    classic queue on a cluster node that died cannot be declared again elsewhere."""

    def __init__(self, specs_for):
        self._specs_for = specs_for
        self._last = (None, None)          # (peer, token); the peer object itself

    def token(self, peer):
        last, token = self._last
        if token is None or last is not peer:
            token = uuid.uuid4().hex[:12]
            self._last = (peer, token)
        return token

    def specs(self, peer, addresser):
        return self._specs_for(addresser, self.token(peer))


class ReplySource:
    """``ConnectionSettings.reply_source`` for one driver connection.

    For a RabbitMQ 3.x peer: the v1 address of this connection's own reply queue. The
    name is made once, so a reconnection consumes from the same queue (replies that
    arrived meanwhile are not lost). For RabbitMQ 4.x: the v2 address of a reply queue
    the Declarer declares, a new one per connection (module docstring; requests name
    it through amq.direct, RabbitMQAddresser.reply_to). Every other peer: None, a
    dynamic source.

    4.x also offers replies without a declared queue -- 4.1 a dynamic source with the
    ``temporary-queue`` capability (an exclusive queue deleted with the link), 4.2
    Direct Reply-To (``rabbitmq:volatile-queue``) -- but both give a ``/queues/...``
    reply address, and a responder's link to one whose requester has gone is refused
    (4.1 by ending the responder's session). A declared queue bound to amq.direct
    works on every 4.x the same way, and is what 4.0 needs anyway.
    """

    def __init__(self, config, name=None):
        self._config = config
        self.queue = name or f"{REPLY_QUEUE_PREFIX}{uuid.uuid4().hex}"
        self._plan = QueuePlan(self._specs)

    def _specs(self, addresser, token):
        name = f"{self.queue}.{token}"
        return [QueueSpec(name, transient=True, bindings=_bound(name))]

    def applies(self, properties):
        return wanted(self._config, properties) or is_rabbitmq(properties)

    def specs(self, peer):
        """The reply queue to declare for ``peer`` (4.x only)."""
        properties = peer.properties if peer is not None else {}
        if not (self.applies(properties) and uses_v2(properties)):
            return []
        return self._plan.specs(peer, None)

    def __call__(self, peer):
        properties = peer.properties if peer is not None else {}
        if not self.applies(properties):
            return None
        if uses_v2(properties):
            return v2_queue(self.specs(peer)[0].name)
        return v1_queue(self.queue)


class Declarer:
    """What one driver connection declares on RabbitMQ, and when (module docstring).

    ``addresser_for(peer)`` is the driver's addresser choice. Plans are added by
    listeners (and removed when they stop); :meth:`prepare` is the engine's
    ``ConnectionSettings.prepare`` and declares the reply queue and every plan's
    queues on each new connection; :meth:`ensure` declares one plan now, from the
    caller's thread. Declaring is idempotent; what was declared on a peer is not
    asked again on it. ``settings`` (the connection's ConnectionSettings: SASL, TLS,
    virtual host) is set once the settings exist.
    """

    def __init__(self, addresser_for, options, reply_source, timeout=DECLARE_TIMEOUT):
        self._addresser_for = addresser_for
        self._options = options
        self.reply_source = reply_source
        self._timeout = timeout
        self.settings = None
        self._plans = []
        self._lock = threading.Lock()
        self._done = (None, frozenset())    # (peer, QueueSpecs declared on it)
        self._keys = (None, frozenset())    # (peer, ensure() keys done on it)
        self.log = []                       # (QueueSpec, "declared" | error text)

    def add(self, plan):
        with self._lock:
            self._plans.append(plan)

    def discard(self, plan):
        with self._lock:
            if plan in self._plans:
                self._plans.remove(plan)

    def prepare(self, peer):
        """Declare the reply queue and every plan's queues on ``peer`` (a new
        connection). Never called on an I/O thread; raises DeclarationError."""
        addresser = self._addresser_for(peer)
        if getattr(addresser, "syntax", None) != RabbitMQAddresser.syntax:
            return
        with self._lock:
            plans = list(self._plans)
        specs = list(self.reply_source.specs(peer)) if self.reply_source else []
        for plan in plans:
            specs.extend(plan.specs(peer, addresser))
        self._declare(peer, addresser, specs)

    def ensure(self, peer, plan, key=None):
        """Declare ``plan``'s queues on ``peer`` now (if not done there already).
        ``key`` names the plan (e.g. a notifier's address): once it is done on a
        peer, a later call with it returns at once, without making the plan's specs
        (the notifier's path, once per notification)."""
        if peer is None:
            return        # not connected yet: prepare() will, before any link
        last, keys = self._keys
        if key is not None and last is peer and key in keys:
            return
        addresser = self._addresser_for(peer)
        if getattr(addresser, "syntax", None) == RabbitMQAddresser.syntax:
            self._declare(peer, addresser, plan.specs(peer, addresser))
        if key is not None:
            with self._lock:
                last, keys = self._keys
                keys = keys if last is peer else frozenset()
                self._keys = (peer, keys | {key})

    def _declare(self, peer, addresser, specs):
        with self._lock:
            last, done = self._done
            done = done if last is peer else frozenset()
        todo = [s for s in dict.fromkeys(specs) if s not in done]
        if not todo:
            return
        if addresser.version >= 2:
            self._declare_v2(peer.host, todo)
        else:
            # 3.x: only queues with bindings need it (the notification pools).
            todo = [s for s in todo if s.bindings]
            if todo:
                declare_groups(peer.host, todo, self.settings, self._timeout)
        with self._lock:
            last, done = self._done
            done = done if last is peer else frozenset()
            self._done = (peer, done | frozenset(todo))

    def _declare_v2(self, host, specs):
        from fastamqp.rabbitmq import management as rabbitmq_mgmt
        with rabbitmq_mgmt.Management(host, self.settings, self._timeout) as mgmt:
            for spec in specs:
                try:
                    mgmt.declare_queue(spec.name, **self._options.declaration(spec))
                    for exchange, key in spec.bindings:
                        mgmt.bind(spec.name, exchange, key)
                except exceptions.DeclarationError as exc:
                    self._note(spec, str(exc))
                    raise
                self._note(spec, "declared")

    def _note(self, spec, outcome):
        self.log.append((spec, outcome))
        del self.log[:-200]


def _tls_options(settings, hostname):
    """py-amqp's TLS options for the AMQP 0-9-1 side connection, verifying as the AMQP
    1.0 connection does (fastamqp.engine.control): the CA file or else the system CAs, and
    the server's name."""
    if settings.ssl_key_password:
        raise ConnectionError("ssl_key_password is set, and the AMQP 0-9-1 connection "
                              "that declares notification pool queues cannot use an "
                              "encrypted client key")
    return {"ca_certs": settings.ssl_ca_file or None,
            "certfile": settings.ssl_cert_file or None,
            "keyfile": settings.ssl_key_file or settings.ssl_cert_file or None,
            "cert_reqs": ssl.CERT_REQUIRED,
            "server_hostname": settings.ssl_peer_name or hostname}


def declare_groups(host, queues, settings=None, timeout=DECLARE_TIMEOUT):
    """3.x: declare each QueueSpec's queue and bind it, over AMQP 0-9-1 to ``host`` (a
    fastamqp.interface.Host on the port that also speaks AMQP 1.0).

    The queue is declared as the AMQP 1.0 plugin declares a ``/queue/`` node
    (non-durable, not exclusive, not auto-delete), so that the listener's link finds
    it as it would have made it. Raises exceptions.DeclarationError naming the cause.
    """
    import amqp   # py-amqp: oslo.messaging's rabbit driver needs it, so it is there
    options = {}
    where = f"{host.hostname}:{host.port}"
    try:
        if settings is not None and settings.tls:
            options["ssl"] = _tls_options(settings, host.hostname)
        with amqp.Connection(host=where, userid=host.username or "guest",
                             password=host.password or "guest", virtual_host="/",
                             connect_timeout=timeout, read_timeout=timeout,
                             write_timeout=timeout, **options) as conn:
            channel = conn.channel()
            for queue in queues:
                channel.queue_declare(queue.name, durable=False, auto_delete=False)
                for exchange, key in queue.bindings:
                    channel.queue_bind(queue.name, exchange, key)
    except Exception as exc:
        refused = isinstance(exc, (amqp.exceptions.AccessRefused,
                                   amqp.exceptions.PreconditionFailed,
                                   amqp.exceptions.NotAllowed))
        raise exceptions.DeclarationError(
            f"RabbitMQ at {where}: declaring the notification pool queue(s) "
            f"{', '.join(q.name for q in queues)} over AMQP 0-9-1 failed: "
            f"{type(exc).__name__}: {exc}", refused=refused) from None
