"""python -m fastamqp.intermediary --mode router|broker --listen 127.0.0.1:5672 [...]

Runs in the foreground until SIGINT/SIGTERM, then prints the counters as JSON.
"""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading

from . import Intermediary


def _endpoint(text: str):
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError("expected HOST:PORT, got %r" % text)
    return (host.strip("[]") or "127.0.0.1", int(port))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="fastamqp intermediary",
                                 description="fastamqp's embedded AMQP 1.0 intermediary")
    ap.add_argument("--mode", choices=("router", "broker"), default="router")
    ap.add_argument("--listen", action="append", type=_endpoint, metavar="HOST:PORT",
                    help="may be repeated; port 0 picks a free port (default 127.0.0.1:0)")
    ap.add_argument("--product", help="Open 'product' property (default by mode)")
    ap.add_argument("--router-id", default="fastamqp")
    ap.add_argument("--idle-timeout", type=float, default=None,
                    help="seconds; ask clients for heartbeats")
    ap.add_argument("--verbose", "-v", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING)

    im = Intermediary(mode=args.mode, listen=args.listen or [("127.0.0.1", 0)],
                      product=args.product, router_id=args.router_id,
                      idle_timeout=args.idle_timeout)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    im.start()
    print("fastamqp intermediary (%s, product %s) listening on %s"
          % (im.mode, im.product, " ".join(im.urls)), flush=True)
    try:
        while not stop.wait(0.5):
            if not im.running:
                print("intermediary loop stopped unexpectedly", file=sys.stderr)
                return 1
    finally:
        counters = im.counters
        im.stop(clean=True)
        print(json.dumps(counters, indent=2, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
