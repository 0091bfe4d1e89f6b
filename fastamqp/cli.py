"""The ``fastamqp`` command."""
import argparse
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(prog="fastamqp", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    # "selfcheck" was its name until 0.1: kept as an alias so that scripts go on working.
    check = sub.add_parser("codec-check", aliases=["selfcheck"],
                           help="check every message kind through both codecs against "
                                "the original driver's encoding, and time them")
    check.add_argument("--number", type=int, default=2000,
                       help="messages per timing round (default 2000)")
    sub.add_parser("engine", help="print the active engine: 'c' or 'python'")
    sub.add_parser("demo", add_help=False,
                   help="oslo RPC and notifications through the embedded intermediary, "
                        "C and pure-Python engines side by side")
    sub.add_parser("intermediary", add_help=False,
                   help="run the embedded AMQP 1.0 router or broker (see "
                        "'fastamqp intermediary --help')")
    sub.add_parser("check", add_help=False,
                   help="connect to a transport URL as the driver would and report the "
                        "peer, addressing, SASL, TLS and a probe's round trip")
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["check"]:
        from fastamqp.tools.check import main as check_main
        return check_main(argv[1:])
    if argv[:1] == ["demo"]:
        from fastamqp.tools.demo import main as demo_main
        return demo_main(argv[1:])
    if argv[:1] == ["intermediary"]:
        from fastamqp.intermediary.__main__ import main as intermediary_main
        return intermediary_main(argv[1:])
    args = parser.parse_args(argv)
    if args.command == "engine":
        from fastamqp import engine_name
        print(engine_name())
        return 0
    from fastamqp.tools import codec_check
    return codec_check.main(args.number)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
