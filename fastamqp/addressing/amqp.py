"""The two AMQP address syntaxes of the original driver: legacy (flat names for
brokers) and routable (router meshes); see fastamqp.addressing."""
from fastamqp.addressing.base import Addresser, SERVICE_NOTIFY, SERVICE_RPC, _join  # noqa: F401


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
