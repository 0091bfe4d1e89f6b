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
from fastamqp.addressing import rabbitmq
from fastamqp.addressing.amqp import LegacyAddresser, RoutableAddresser
from fastamqp.addressing.base import (BROKER_PRODUCT, ROUTER_PRODUCTS, SERVICE_NOTIFY,
                                      SERVICE_RPC, Addresser, AddressingConfig,
                                      group_name, is_router)

__all__ = ["BROKER_PRODUCT", "ROUTER_PRODUCTS", "SERVICE_NOTIFY", "SERVICE_RPC", "Addresser",
           "AddressingConfig", "LegacyAddresser", "RoutableAddresser", "choose_addresser",
           "group_name", "is_router", "rabbitmq"]


def choose_addresser(config, peer_properties, vhost=None):
    """The addresser for a connection, from the options and the peer's Open properties.

    ``vhost`` is the URL's virtual host when pseudo_vhost is on, else None.
    RabbitMQ (mode ``rabbitmq``, or ``dynamic`` and its product) has its own syntax:
    fastamqp.addressing.rabbitmq.
    """
    if rabbitmq.wanted(config, peer_properties):
        return rabbitmq.RabbitMQAddresser.for_peer(config, peer_properties, vhost)
    product = (peer_properties or {}).get("product", BROKER_PRODUCT)
    if config.mode == "legacy" or (config.mode == "dynamic" and product == BROKER_PRODUCT):
        return LegacyAddresser(config, vhost)
    return RoutableAddresser(config, vhost)
