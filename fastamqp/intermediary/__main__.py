"""python -m fastamqp.intermediary --mode router|broker --listen 127.0.0.1:5672 [...]

Runs in the foreground until SIGINT/SIGTERM, then prints the counters as JSON. SIGUSR1
prints them as one JSON line meanwhile (what the benchmarks read between phases).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading

from . import Intermediary, Listener, TLSConfig, routing


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
    ap.add_argument("--link-capacity", type=int, default=routing.DEFAULT_WINDOW,
                    metavar="N",
                    help="qdrouterd's linkCapacity: a producer's credit window and, in "
                         "router mode, the undelivered depth at which a consumer link "
                         "discards its pre-settled deliveries (default %(default)s)")
    ap.add_argument("--idle-timeout", type=float, default=None,
                    help="seconds; ask clients for heartbeats")
    ap.add_argument("--listen-tls", action="append", type=_endpoint, metavar="HOST:PORT",
                    default=[], help="a TLS listener (needs --ssl-cert); may be repeated")
    ap.add_argument("--sasl-mechanisms", default="ANONYMOUS",
                    help="space separated, of ANONYMOUS PLAIN EXTERNAL "
                         "(default: ANONYMOUS)")
    ap.add_argument("--users-file", metavar="FILE",
                    help="SASL PLAIN users, one 'user:password' a line")
    ap.add_argument("--ssl-cert", metavar="PEM", help="server certificate")
    ap.add_argument("--ssl-key", metavar="PEM", help="its private key")
    ap.add_argument("--ssl-key-password-env", metavar="VAR",
                    help="name of an environment variable holding the key password")
    ap.add_argument("--ssl-ca", metavar="PEM",
                    help="require client certificates signed by this CA (EXTERNAL)")
    ap.add_argument("--engine", choices=("python", "c"), default="python",
                    help="python: the full intermediary (default); c: the C relay "
                         "(one plain TCP listener, SASL ANONYMOUS, no fault hooks)")
    ap.add_argument("--verbose", "-v", action="store_true")
    args = ap.parse_args(argv)
    if args.link_capacity < 1:
        ap.error("--link-capacity must be at least 1")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING)

    users = {}
    if args.users_file:
        with open(args.users_file) as f:
            for line in f:
                line = line.strip()
                if line and not line.startswith("#"):
                    user, sep, password = line.partition(":")
                    if not sep:
                        ap.error("--users-file: expected user:password lines")
                    users[user] = password
    tls = None
    if args.listen_tls:
        if not args.ssl_cert:
            ap.error("--listen-tls needs --ssl-cert")
        password = os.environ.get(args.ssl_key_password_env) \
            if args.ssl_key_password_env else None
        tls = TLSConfig(args.ssl_cert, args.ssl_key, password, args.ssl_ca)
    listen = list(args.listen or [])
    if not listen and not args.listen_tls:
        listen = [("127.0.0.1", 0)]
    listen += [Listener(host, port, ssl=tls) for host, port in args.listen_tls]
    if args.engine == "c":
        from .relay import Relay, available
        if not available():
            ap.error("--engine c: the C relay extension is not built")
        if args.listen_tls or args.users_file or args.idle_timeout is not None \
                or len(listen) != 1 or args.sasl_mechanisms.upper().split() != ["ANONYMOUS"]:
            ap.error("--engine c supports one plain --listen, SASL ANONYMOUS, and no "
                     "--listen-tls/--users-file/--idle-timeout (use --engine python)")
        im = Relay(mode=args.mode, host=listen[0][0], port=listen[0][1],
                   product=args.product, router_id=args.router_id,
                   window=args.link_capacity)
        return _serve(im, lambda: im.url.rstrip("/"))
    im = Intermediary(mode=args.mode, listen=listen,
                      product=args.product, router_id=args.router_id,
                      window=args.link_capacity, idle_timeout=args.idle_timeout,
                      sasl_mechanisms=args.sasl_mechanisms, users=users)
    return _serve(im, lambda: " ".join(lst.url + (" (TLS)" if lst.ssl else "")
                                       for lst in im.listeners))


def _serve(im, where) -> int:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    # The main thread only waits on `stop`, so printing from the handler is safe.
    signal.signal(signal.SIGUSR1,
                  lambda *_: print(json.dumps(im.counters, sort_keys=True), flush=True))
    im.start()
    print("fastamqp intermediary (%s, product %s) listening on %s"
          % (im.mode, im.product, where()),
          flush=True)
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
