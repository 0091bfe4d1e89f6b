"""The original driver's [oslo_messaging_amqp] options, as JSON."""
import json
import sys

from oslo_messaging._drivers.amqp1_driver import opts

out = []
for opt in opts.amqp1_opts:
    out.append({
        "name": opt.name,
        "type": type(opt).__name__,
        "default": opt.default,
        "min": getattr(opt.type, "min", None),
        "secret": opt.secret,
        "deprecated_groups": sorted(d.group for d in opt.deprecated_opts if d.group),
    })
json.dump(out, sys.stdout)
