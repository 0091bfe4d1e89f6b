"""The [oslo_messaging_amqp] options: the original's 38, unchanged in what a
configuration file or a transport URL can see, plus ours."""
import pytest
from oslo_config import cfg

from fastamqp import opts
from fastamqp.exceptions import ConfigurationError


def _describe(opt):
    return {"name": opt.name, "type": type(opt).__name__, "default": opt.default,
            "min": getattr(opt.type, "min", None), "secret": opt.secret,
            "deprecated_groups": sorted(d.group for d in opt.deprecated_opts if d.group)}


def test_the_38_options_match_the_original(original):
    theirs = original("options.py", {})
    ours = [_describe(opt) for opt in opts.amqp1_opts]
    assert len(ours) == len(theirs) == 38
    # One deliberate difference: casts are confirmed by default (docs/migration.md).
    [their_pre] = [o for o in theirs if o["name"] == "pre_settled"]
    [our_pre] = [o for o in ours if o["name"] == "pre_settled"]
    assert their_pre["default"] == ["rpc-cast", "rpc-reply"]
    assert our_pre["default"] == ["rpc-reply"]
    our_pre["default"] = their_pre["default"]
    assert ours == theirs


@pytest.fixture
def conf():
    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    conf([], project="fastamqp-test")
    return conf


def test_defaults(conf):
    group = conf.oslo_messaging_amqp
    assert group.addressing_mode == "dynamic"
    assert group.serializer == "json"
    assert opts.pre_settled(group) == {"rpc-reply"}
    assert group.send_window == 1000
    assert group.cleanup_drain_timeout == 10.0
    assert group.connection_retry_backoff == 2


def test_deprecated_group_still_read(tmp_path):
    path = tmp_path / "old.conf"
    path.write_text("[amqp1]\nidle_timeout = 7\nserver_request_prefix = srv\n")
    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    conf(["--config-file", str(path)], project="fastamqp-test")
    assert conf.oslo_messaging_amqp.idle_timeout == 7
    assert conf.oslo_messaging_amqp.server_request_prefix == "srv"


def test_unknown_addressing_mode_names_the_option(tmp_path):
    path = tmp_path / "bad.conf"
    path.write_text("[oslo_messaging_amqp]\naddressing_mode = routeable\n")
    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    conf(["--config-file", str(path)], project="fastamqp-test")
    with pytest.raises(cfg.ConfigFileValueError, match="addressing_mode"):
        conf.oslo_messaging_amqp.addressing_mode


def test_unknown_pre_settled_value_names_the_option(conf):
    conf.set_override("pre_settled", ["rpc-cast", "rpc-casts"], "oslo_messaging_amqp")
    with pytest.raises(ConfigurationError, match="pre_settled.*rpc-casts"):
        opts.pre_settled(conf.oslo_messaging_amqp)


def test_unknown_serializer_rejected(conf):
    with pytest.raises(ValueError):
        conf.set_override("serializer", "pickle", "oslo_messaging_amqp")


def test_list_opts_for_the_config_generator():
    [(group, listed)] = opts.list_opts()
    assert group == "oslo_messaging_amqp"
    assert {o.name for o in listed} >= {"serializer", "pre_settled", "idle_timeout",
                                        "notification_pools", "rabbit_quorum_queue",
                                        "rabbit_transient_queues_ttl"}
    # The original's 38, serializer, notification_pools, send_window,
    # cleanup_drain_timeout and the two RabbitMQ 4 queue options (named as the rabbit
    # driver's).
    assert len(listed) == 44


def test_config_generator_entry_point():
    from importlib.metadata import entry_points
    [ep] = [ep for ep in entry_points(group="oslo.config.opts") if ep.name == "fastamqp"]
    assert ep.load() is opts.list_opts


def test_pre_settled_from_a_url_query_or_the_environment_is_one_string():
    # amqp://host?pre_settled=rpc-cast,notify reaches the driver as one string.
    class Group:
        pre_settled = "rpc-cast,notify"
    assert opts.pre_settled(Group) == {"rpc-cast", "notify"}
    Group.pre_settled = "rpc-cast"
    assert opts.pre_settled(Group) == {"rpc-cast"}
