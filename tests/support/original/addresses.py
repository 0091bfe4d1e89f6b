"""Addresses the original driver's addressing.py gives for each case on stdin."""
import json
import sys

from oslo_messaging._drivers.amqp1_driver import addressing
from oslo_messaging.target import Target

SERVICES = {"rpc": addressing.SERVICE_RPC, "notify": addressing.SERVICE_NOTIFY}

answers = []
for case in json.load(sys.stdin):
    factory = addressing.AddresserFactory(case["default_exchange"], case["mode"],
                                          **case["factory"])
    addresser = factory(case["peer_properties"], case["vhost"])
    out = []
    for t in case["targets"]:
        target = Target(exchange=t["exchange"], topic=t["topic"], server=t["server"],
                        fanout=t["fanout"])
        out.append(addresser.resolve(target, SERVICES[t["service"]]))
    answers.append(out)
json.dump(answers, sys.stdout)
