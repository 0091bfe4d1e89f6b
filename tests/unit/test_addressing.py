"""Address strings: the exact table of REFERENCE §3.3, and the original driver's
addressing.py (run in its own virtualenv) over a wide grid of targets and options."""
import itertools
import types

import pytest

from fastamqp.addressing import (SERVICE_NOTIFY, SERVICE_RPC, AddressingConfig,
                                 LegacyAddresser, RoutableAddresser, choose_addresser)


def target(topic="compute", server=None, fanout=False, exchange=None):
    return types.SimpleNamespace(topic=topic, server=server, fanout=fanout,
                                 exchange=exchange)


ROUTER = {"product": "qpid-dispatch-router"}
BROKER = {"product": "qpid-cpp"}
CONFIG = AddressingConfig(default_exchange="openstack")


def table_row(addresser):
    """The REFERENCE §3.3 table's patterns, in its order."""
    return [addresser.resolve(target()),
            addresser.resolve(target(fanout=True)),
            addresser.resolve(target(server="host1")),
            addresser.resolve(target(server="host1", exchange="nova")),
            addresser.resolve(target("notifications.info"), SERVICE_NOTIFY)]


@pytest.mark.parametrize("vhost, expected", [
    (None, ["unicast.openstack.compute", "broadcast.openstack.compute.all",
            "exclusive.openstack.compute.host1", "exclusive.nova.compute.host1",
            "unicast.openstack.notifications.info"]),
    ("vh1", ["unicast.vh1.openstack.compute", "broadcast.vh1.openstack.compute.all",
             "exclusive.vh1.openstack.compute.host1", "exclusive.vh1.nova.compute.host1",
             "unicast.vh1.openstack.notifications.info"]),
])
def test_legacy_table(vhost, expected):
    addresser = choose_addresser(CONFIG, BROKER, vhost)
    assert isinstance(addresser, LegacyAddresser)
    assert table_row(addresser) == expected


@pytest.mark.parametrize("vhost, expected", [
    (None, ["openstack.org/om/rpc/anycast/openstack/compute",
            "openstack.org/om/rpc/multicast/openstack/compute",
            "openstack.org/om/rpc/unicast/openstack/compute/host1",
            "openstack.org/om/rpc/unicast/nova/compute/host1",
            "openstack.org/om/notify/anycast/openstack/notifications.info"]),
    ("vh1", ["openstack.org/om/rpc/anycast/vh1/openstack/compute",
             "openstack.org/om/rpc/multicast/vh1/openstack/compute",
             "openstack.org/om/rpc/unicast/vh1/openstack/compute/host1",
             "openstack.org/om/rpc/unicast/vh1/nova/compute/host1",
             "openstack.org/om/notify/anycast/vh1/openstack/notifications.info"]),
])
def test_routable_table(vhost, expected):
    addresser = choose_addresser(CONFIG, ROUTER, vhost)
    assert isinstance(addresser, RoutableAddresser)
    assert table_row(addresser) == expected


def test_server_subscriptions():
    legacy = choose_addresser(CONFIG, BROKER)
    routable = choose_addresser(CONFIG, ROUTER)
    t = target(server="host1")
    assert legacy.server_addresses(t) == ["exclusive.openstack.compute.host1",
                                          "broadcast.openstack.compute.all",
                                          "unicast.openstack.compute"]
    assert routable.server_addresses(t) == [
        "openstack.org/om/rpc/unicast/openstack/compute/host1",
        "openstack.org/om/rpc/multicast/openstack/compute",
        "openstack.org/om/rpc/anycast/openstack/compute"]


def test_no_exchange():
    config = AddressingConfig(default_exchange=None)
    legacy = choose_addresser(config, BROKER)
    assert legacy.resolve(target()) == "unicast.compute"
    assert legacy.resolve(target(fanout=True)) == "broadcast.compute.all"
    assert legacy.resolve(target(server="host1")) == "exclusive.compute.host1"
    routable = choose_addresser(config, ROUTER)
    assert routable.resolve(target()) == "openstack.org/om/rpc/anycast/openstack/compute"


@pytest.mark.parametrize("mode, properties, syntax", [
    ("dynamic", {"product": "qpid-cpp"}, "legacy"),
    ("dynamic", {}, "legacy"),                       # no product: assumed a broker
    ("dynamic", None, "legacy"),
    ("dynamic", {"product": "qpid-dispatch-router"}, "routable"),
    ("dynamic", {"product": "apache-activemq-artemis"}, "routable"),
    ("legacy", {"product": "qpid-dispatch-router"}, "legacy"),
    ("routable", {"product": "qpid-cpp"}, "routable"),
])
def test_peer_detection(mode, properties, syntax):
    config = AddressingConfig(mode=mode, default_exchange="openstack")
    assert choose_addresser(config, properties).syntax == syntax


def test_options_change_addresses():
    config = AddressingConfig(
        default_exchange="ctl", server_request_prefix="srv", broadcast_prefix="bc",
        group_request_prefix="grp", rpc_address_prefix="my/rpc",
        notify_address_prefix="my/notify", multicast_address="all",
        unicast_address="one", anycast_address="any", default_rpc_exchange="rx",
        default_notification_exchange="nx")
    legacy = choose_addresser(config, BROKER)
    assert legacy.resolve(target(server="h")) == "srv.ctl.compute.h"
    assert legacy.resolve(target(fanout=True)) == "bc.ctl.compute.all"
    assert legacy.resolve(target()) == "grp.ctl.compute"
    routable = choose_addresser(config, ROUTER)
    assert routable.resolve(target(server="h")) == "my/rpc/one/rx/compute/h"
    assert routable.resolve(target(fanout=True)) == "my/rpc/all/rx/compute"
    assert routable.resolve(target("n.info"), SERVICE_NOTIFY) == "my/notify/any/nx/n.info"


# --- against the original driver ---------------------------------------------------

FACTORY_KEYS = {  # AddressingConfig field -> the original AddresserFactory keyword
    "server_request_prefix": "legacy_server_prefix",
    "broadcast_prefix": "legacy_broadcast_prefix",
    "group_request_prefix": "legacy_group_prefix",
    "rpc_address_prefix": "rpc_prefix", "notify_address_prefix": "notify_prefix",
    "multicast_address": "multicast", "unicast_address": "unicast",
    "anycast_address": "anycast", "default_rpc_exchange": "rpc_exchange",
    "default_notification_exchange": "notify_exchange",
}


def _cases():
    targets = [dict(topic=topic, server=server, fanout=fanout, exchange=exchange,
                    service=service)
               for topic, server, fanout, exchange, service in itertools.product(
                   ["compute", "notifications.info"], [None, "host1"], [False, True],
                   [None, "nova"], [SERVICE_RPC, SERVICE_NOTIFY])]
    option_sets = [
        {},
        {"default_rpc_exchange": "rx", "default_notification_exchange": "nx"},
        {"server_request_prefix": "srv", "broadcast_prefix": "bc",
         "group_request_prefix": "grp", "rpc_address_prefix": "a/b",
         "notify_address_prefix": "c/d", "multicast_address": "m",
         "unicast_address": "u", "anycast_address": "y"},
    ]
    cases = []
    for mode, properties, vhost, default_exchange, options in itertools.product(
            ["dynamic", "legacy", "routable"],
            [{"product": "qpid-cpp"}, {"product": "qpid-dispatch-router"}, {}],
            [None, "vh1"], [None, "", "openstack", "ctl"], option_sets):
        config = AddressingConfig(mode=mode, default_exchange=default_exchange, **options)
        cases.append((config, properties, vhost, targets))
    return cases


def test_same_addresses_as_the_original_driver(original):
    cases = _cases()
    request = []
    for config, properties, vhost, targets in cases:
        factory = {FACTORY_KEYS[name]: getattr(config, name) for name in FACTORY_KEYS}
        request.append({"mode": config.mode, "default_exchange": config.default_exchange,
                        "factory": factory, "peer_properties": properties,
                        "vhost": vhost, "targets": targets})
    expected = original("addresses.py", request)
    compared = 0
    for (config, properties, vhost, targets), want in zip(cases, expected):
        addresser = choose_addresser(config, properties, vhost)
        got = [addresser.resolve(target(t["topic"], t["server"], t["fanout"],
                                        t["exchange"]), t["service"]) for t in targets]
        assert got == want, (config, properties, vhost)
        compared += len(got)
    assert compared == len(cases) * 32
