"""Addresses for RabbitMQ, which names AMQP 1.0 nodes after its own queues and exchanges.

RabbitMQ does not route arbitrary address strings (qdrouterd) or create a queue per
pattern (qpidd): an address names a queue, or an exchange plus a routing key. Two
syntaxes exist, chosen from the peer's Open ``version`` property:

* 3.x, the ``rabbitmq_amqp1_0`` plugin ("v1" addresses; only ``%2F`` is unescaped):
    ``/queue/Q``        target: declare queue Q (if missing) and publish to it;
                        source: declare Q and consume from it (competing consumers)
    ``/exchange/X/K``   target: publish to exchange X with routing key K;
                        source: declare a server-named queue (``amq.gen-...``), bind
                        it to X with K and consume from it: each link its own copy
* 4.x, native AMQP 1.0 ("v2" addresses, each part percent-encoded, RFC 3986):
    ``/queues/Q`` and ``/exchanges/X/K``; nothing is declared or bound for the
    client (see docs/rabbitmq.md for what that means).

The names are the routable addresses of fastamqp.addressing (so rpc_address_prefix,
notify_address_prefix, the multicast/unicast/anycast tags and the exchanges all apply):

    RPC to a topic (anycast)  queue openstack.org/om/rpc/anycast/openstack/compute
    RPC to one server         queue openstack.org/om/rpc/unicast/openstack/compute/host1
    RPC fanout                amq.direct, key
                                    openstack.org/om/rpc/multicast/openstack/compute
    notification              queue
                              openstack.org/om/notify/anycast/openstack/notifications.info

Fanout goes through ``amq.direct`` (present on every virtual host; exact-match keys,
so no topic character is ever a wildcard): every RPC server's link gets its own queue
bound to it, so every server gets each fanout message. Anycast, direct and
notification queues are shared, so their consumers compete.

Notification pools (option ``notification_pools``): RabbitMQ ignores the ``shared``
source capability (each ``/exchange`` receiver gets a private queue), so a consumer
group is a queue of its own, ``<topic name>#<pool>``, bound to amq.direct with the
topic name as routing key; the notifier publishes to amq.direct with that key. AMQP 1.0
can neither declare nor bind such a queue on 3.x, so fastamqp does it over AMQP 0-9-1
on the same port with the same credentials (:func:`declare_groups`): the listener for
its own group on every (re)connection, the notifier for the group without a pool
before its first notification to a topic (as the rabbit driver declares the default
notification queue), so nothing sent before the first listener starts is lost.

Replies: RabbitMQ 3.x has no dynamic sources, so each connection consumes from a named
queue of its own, ``fastamqp-reply.<uuid>`` (:class:`ReplySource`). The 3.x plugin
declares every queue non-exclusive and not auto-delete (whatever the link asks), so
these queues and the ``amq.gen-`` fanout queues outlive their client unless the
operator gives them an expiry policy (TRANSIENT_QUEUE_PATTERN, docs/rabbitmq.md).
"""
import collections
import logging
import re
import ssl
import uuid
from urllib.parse import quote

from fastamqp import addressing

LOG = logging.getLogger(__name__)

PRODUCT = "rabbitmq"                  # the Open property product, compared caseless
MODE = "rabbitmq"                     # the addressing_mode value that forces it

FANOUT_EXCHANGE = "amq.direct"
REPLY_QUEUE_PREFIX = "fastamqp-reply."
# The queues that must not outlive their client: for an operator policy with "expires".
TRANSIENT_QUEUE_PATTERN = r"^(fastamqp-reply\.|amq\.gen-)"
GROUP_EXCHANGE = "amq.direct"         # notification pools (module docstring)
DECLARE_TIMEOUT = 10.0

# A notification consumer group's queue and how it is bound.
GroupBinding = collections.namedtuple("GroupBinding", "queue exchange key")


def is_rabbitmq(peer_properties):
    """Whether the peer's Open properties say RabbitMQ."""
    product = (peer_properties or {}).get("product")
    return isinstance(product, str) and product.strip().lower() == PRODUCT


def major_version(peer_properties):
    """The peer's major version from its Open ``version`` property, or None."""
    version = (peer_properties or {}).get("version")
    match = re.match(r"\s*(\d+)", version) if isinstance(version, str) else None
    return int(match.group(1)) if match else None


def uses_v2(peer_properties):
    """RabbitMQ 4 and later: native AMQP 1.0 with v2 addresses."""
    major = major_version(peer_properties)
    return major is not None and major >= 4


def wanted(config, peer_properties):
    """Whether RabbitMQ addressing applies: forced by the mode, or ``dynamic`` mode
    and a peer that says it is RabbitMQ."""
    return config.mode == MODE or (config.mode == "dynamic"
                                   and is_rabbitmq(peer_properties))


# ---- the two address syntaxes -------------------------------------------------------
def v1_queue(name):
    # The 3.x plugin splits addresses on "/" and unescapes only "%2F".
    return "/queue/" + name.replace("/", "%2F")


def v1_exchange(exchange, key):
    return f"/exchange/{exchange.replace('/', '%2F')}/{key.replace('/', '%2F')}"


def v2_queue(name):
    return "/queues/" + quote(name, safe="")


def v2_exchange(exchange, key):
    return f"/exchanges/{quote(exchange, safe='')}/{quote(key, safe='')}"


class RabbitMQAddresser(addressing.Addresser):
    """RabbitMQ queue and exchange addresses (module docstring); ``version`` 2 for
    RabbitMQ 4.x, 1 for 3.x (and when the peer gives no version)."""

    syntax = "rabbitmq"

    def __init__(self, config, vhost=None, version=1):
        self._names = addressing.RoutableAddresser(config, vhost)
        self.version = version
        if version >= 2:
            self._queue, self._exchange = v2_queue, v2_exchange
        else:
            self._queue, self._exchange = v1_queue, v1_exchange

    @classmethod
    def for_peer(cls, config, peer_properties, vhost=None):
        return cls(config, vhost, version=2 if uses_v2(peer_properties) else 1)

    def multicast_address(self, target, service=addressing.SERVICE_RPC):
        return self._exchange(FANOUT_EXCHANGE,
                              self._names.multicast_address(target, service))

    def unicast_address(self, target, service=addressing.SERVICE_RPC):
        return self._queue(self._names.unicast_address(target, service))

    def anycast_address(self, target, service=addressing.SERVICE_RPC):
        return self._queue(self._names.anycast_address(target, service))

    def fanout_subscription(self, target, service=addressing.SERVICE_RPC):
        """Where a server receives fanout messages. v1: the exchange address itself
        (the plugin makes the link a private queue bound to it). v2 sources must be
        queues: one per server, ``<multicast name>/<server>``, which has to be
        declared and bound to amq.direct with the multicast name beforehand."""
        if self.version >= 2:
            name = self._names.multicast_address(target, service)
            return self._queue(f"{name}/{target.server}" if target.server else name)
        return self.multicast_address(target, service)

    def server_addresses(self, target, service=addressing.SERVICE_RPC):
        return [self.unicast_address(target, service),
                self.fanout_subscription(target, service),
                self.anycast_address(target, service)]

    # ---- notification pools (module docstring) ------------------------------------
    def group_binding(self, target, pool):
        key = self._names.multicast_address(target, addressing.SERVICE_NOTIFY)
        return GroupBinding(addressing.group_name(key, pool), GROUP_EXCHANGE, key)

    def notification_topic(self, target):
        binding = self.group_binding(target, None)
        return self._exchange(binding.exchange, binding.key)

    def notification_group(self, target, pool):
        return self._queue(self.group_binding(target, pool).queue)


class ReplySource:
    """``ConnectionSettings.reply_source`` for one driver connection.

    For a RabbitMQ 3.x peer: the v1 address of this connection's own reply queue. The
    name is made once, so a reconnection consumes from the same queue (replies that
    arrived meanwhile are not lost). For RabbitMQ 4.x and every other peer: None, a
    dynamic source (4.1 and later create an exclusive queue for a dynamic source with
    the ``temporary-queue`` capability, deleted with the link).
    """

    def __init__(self, config, name=None):
        self._config = config
        self.queue = name or f"{REPLY_QUEUE_PREFIX}{uuid.uuid4().hex}"

    def __call__(self, peer):
        properties = peer.properties if peer is not None else {}
        if not (wanted(self._config, properties) or is_rabbitmq(properties)):
            return None
        if uses_v2(properties):
            return None
        return v1_queue(self.queue)


def _tls_options(settings, hostname):
    """py-amqp's TLS options for the AMQP 0-9-1 side connection, verifying as the AMQP
    1.0 connection does (fastamqp._control): the CA file or else the system CAs, and
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


def declare_groups(host, bindings, settings=None, timeout=DECLARE_TIMEOUT):
    """Declare each GroupBinding's queue and bind it, over AMQP 0-9-1 to ``host`` (a
    fastamqp.interface.Host on the port that also speaks AMQP 1.0).

    The queue is declared as the AMQP 1.0 plugin declares a ``/queue/`` node
    (non-durable, not exclusive, not auto-delete), so that the listener's link finds
    it as it would have made it. Raises ``ConnectionError`` naming the cause.
    """
    import amqp   # py-amqp: oslo.messaging's rabbit driver needs it, so it is there
    options = {}
    if settings is not None and settings.tls:
        options["ssl"] = _tls_options(settings, host.hostname)
    where = f"{host.hostname}:{host.port}"
    try:
        with amqp.Connection(host=where, userid=host.username or "guest",
                             password=host.password or "guest", virtual_host="/",
                             connect_timeout=timeout, read_timeout=timeout,
                             write_timeout=timeout, **options) as conn:
            channel = conn.channel()
            for binding in bindings:
                channel.queue_declare(binding.queue, durable=False, auto_delete=False)
                channel.queue_bind(binding.queue, binding.exchange, binding.key)
    except Exception as exc:
        raise ConnectionError(
            f"RabbitMQ at {where}: declaring the notification pool queue(s) "
            f"{', '.join(b.queue for b in bindings)} over AMQP 0-9-1 failed: "
            f"{type(exc).__name__}: {exc}") from None
