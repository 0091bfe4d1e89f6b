"""From an oslo.messaging Target to the AMQP address string, and the choice of syntax.

Two syntaxes, exactly as the original driver wrote them (REFERENCE §3.3), because the
intermediaries are configured for them (qdrouterd ``address`` prefixes, qpidd
``queue-patterns``/``topic-patterns``):

* legacy:   ``prefix[.vhost].exchange.topic[.server | .all]`` -- flat names for brokers
* routable: ``prefix/tag[/vhost]/exchange/topic[/server]`` -- for router meshes, with
  separate RPC and notification namespaces

In ``dynamic`` mode the peer decides: legacy for qpidd (Open property
``product = 'qpid-cpp'``, or no product at all), routable for everything else. The
choice is made per connection, so after a failover from a broker to a router the syntax
follows the new peer.

Targets are duck-typed (``topic``, ``exchange``, ``server``, ``fanout``): this module
does not import oslo.messaging.

Notification pools (option ``notification_pools``): the notifier sends to the topic's
multicast address instead of its anycast one, and every consumer group -- each pool,
and the listeners without a pool as one more group -- consumes from a shared
subscription to that topic named ``<topic address>#<pool>`` (``#`` alone for the group
without a pool), so each group gets every notification once.
"""
import dataclasses

from fastamqp.interface import Source

SERVICE_RPC = "rpc"
SERVICE_NOTIFY = "notify"

# What qpidd calls itself; also assumed when the peer names no product.
BROKER_PRODUCT = "qpid-cpp"


@dataclasses.dataclass(frozen=True)
class AddressingConfig:
    """The options that shape addresses ([oslo_messaging_amqp] plus control_exchange)."""

    mode: str = "dynamic"
    default_exchange: str = None          # [DEFAULT] control_exchange
    server_request_prefix: str = "exclusive"
    broadcast_prefix: str = "broadcast"
    group_request_prefix: str = "unicast"
    rpc_address_prefix: str = "openstack.org/om/rpc"
    notify_address_prefix: str = "openstack.org/om/notify"
    multicast_address: str = "multicast"
    unicast_address: str = "unicast"
    anycast_address: str = "anycast"
    default_rpc_exchange: str = None
    default_notification_exchange: str = None

    @classmethod
    def from_conf(cls, group, default_exchange):
        """From the [oslo_messaging_amqp] option group."""
        names = [f.name for f in dataclasses.fields(cls)
                 if f.name not in ("mode", "default_exchange")]
        return cls(mode=group.addressing_mode, default_exchange=default_exchange,
                   **{name: getattr(group, name) for name in names})


def _join(separator, parts):
    # Empty parts (no vhost, no exchange, no server) vanish, separators and all.
    return separator.join(part for part in parts if part)


class Addresser:
    """Builds the address strings of one syntax."""

    syntax = None
    # Whether messages must say durable = false in their header (the codecs'
    # non_durable): a peer that takes a message without it as durable (RabbitMQ 4).
    non_durable = False

    def resolve(self, target, service=SERVICE_RPC):
        """The address a message to ``target`` is sent to: fanout, else a specific
        server, else any server of the topic."""
        if target.fanout:
            return self.multicast_address(target, service)
        if target.server:
            return self.unicast_address(target, service)
        return self.anycast_address(target, service)

    def server_addresses(self, target, service=SERVICE_RPC, token=None):
        """The three addresses an RPC server listening on ``target`` subscribes to.
        ``token`` names queues of one connection's own where the syntax has them
        (fastamqp.rabbitmq)."""
        return [self.unicast_address(target, service),
                self.multicast_address(target, service),
                self.anycast_address(target, service)]

    # ---- queues the client declares itself (RabbitMQ: fastamqp.rabbitmq) -----------
    def server_queues(self, target, token, service=SERVICE_RPC):
        """The queues to declare before an RPC server on ``target`` subscribes:
        none, unless the peer needs clients to declare them."""
        return []

    def notification_queues(self, targets, pool=None, pools=False):
        """The queues to declare for notification listeners (and notifiers)."""
        return []

    def notification_source(self, target):
        """What a notification listener without pools consumes from."""
        return self.resolve(target, SERVICE_NOTIFY)

    def reply_to(self, address):
        """The reply-to of requests whose replies arrive on source ``address``."""
        return address

    def heartbeat_payload(self, payload):
        """A call-monitor heartbeat (a message without a body) as this peer takes
        it: unchanged, unless the peer needs a body (fastamqp.rabbitmq)."""
        return payload

    # ---- notification pools (the module docstring) --------------------------------
    def notification_topic(self, target):
        """Where a notifier sends when pools are on."""
        return self.multicast_address(target, SERVICE_NOTIFY)

    def notification_group(self, target, pool):
        """What a listener in ``pool`` (None: no pool) consumes from when pools are
        on: a shared subscription to the notification topic."""
        topic = self.notification_topic(target)
        return Source(topic, group_name(topic, pool))


def group_name(topic, pool):
    """The name of a consumer group's subscription to a notification topic."""
    return f"{topic}#{pool or ''}"


class LegacyAddresser(Addresser):
    """Flat broker addresses. RPC and notifications share one namespace."""

    syntax = "legacy"

    def __init__(self, config, vhost=None):
        self._config = config
        self._vhost = vhost

    def _exchange(self, target):
        return target.exchange or self._config.default_exchange

    def multicast_address(self, target, service=SERVICE_RPC):
        return _join(".", [self._config.broadcast_prefix, self._vhost,
                           self._exchange(target), target.topic, "all"])

    def unicast_address(self, target, service=SERVICE_RPC):
        return _join(".", [self._config.server_request_prefix, self._vhost,
                           self._exchange(target), target.topic, target.server])

    def anycast_address(self, target, service=SERVICE_RPC):
        return _join(".", [self._config.group_request_prefix, self._vhost,
                           self._exchange(target), target.topic])


class RoutableAddresser(Addresser):
    """Hierarchical router addresses, RPC and notifications under separate prefixes."""

    syntax = "routable"

    def __init__(self, config, vhost=None):
        self._config = config
        self._vhost = vhost
        # Routable addresses always carry an exchange: without a control_exchange
        # the original driver used "openstack".
        default = config.default_exchange or "openstack"
        self._exchanges = {SERVICE_RPC: config.default_rpc_exchange or default,
                           SERVICE_NOTIFY: config.default_notification_exchange or default}
        self._prefixes = {SERVICE_RPC: config.rpc_address_prefix,
                          SERVICE_NOTIFY: config.notify_address_prefix}

    def _address(self, tag, target, service, server=None):
        return _join("/", [self._prefixes[service], tag, self._vhost,
                           target.exchange or self._exchanges[service], target.topic,
                           server])

    def multicast_address(self, target, service=SERVICE_RPC):
        return self._address(self._config.multicast_address, target, service)

    def unicast_address(self, target, service=SERVICE_RPC):
        return self._address(self._config.unicast_address, target, service,
                             target.server)

    def anycast_address(self, target, service=SERVICE_RPC):
        return self._address(self._config.anycast_address, target, service)


# Routers, as their Open "product" names them: qdrouterd, and its successor.
ROUTER_PRODUCTS = ("qpid-dispatch-router", "skupper-router")


def is_router(peer_properties):
    """Whether the peer is a router, which gives a link credit only while the address
    has a consumer: no credit on a fanout's link then means nobody listens. (A broker
    withholding credit is flow control: its fanouts wait.)"""
    return (peer_properties or {}).get("product") in ROUTER_PRODUCTS


def choose_addresser(config, peer_properties, vhost=None):
    """The addresser for a connection, from the options and the peer's Open properties.

    ``vhost`` is the URL's virtual host when pseudo_vhost is on, else None.
    RabbitMQ (mode ``rabbitmq``, or ``dynamic`` and its product) has its own syntax:
    fastamqp.rabbitmq.
    """
    from fastamqp import rabbitmq  # it builds on this module
    if rabbitmq.wanted(config, peer_properties):
        return rabbitmq.RabbitMQAddresser.for_peer(config, peer_properties, vhost)
    product = (peer_properties or {}).get("product", BROKER_PRODUCT)
    if config.mode == "legacy" or (config.mode == "dynamic" and product == BROKER_PRODUCT):
        return LegacyAddresser(config, vhost)
    return RoutableAddresser(config, vhost)
