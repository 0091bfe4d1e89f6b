"""The ``fastamqp`` command."""
import argparse
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(prog="fastamqp", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("selfcheck", help="check every message kind through both "
                           "codecs against the original driver's encoding, and time them")
    check.add_argument("--number", type=int, default=2000,
                       help="messages per timing round (default 2000)")
    sub.add_parser("engine", help="print the active engine: 'c' or 'python'")
    args = parser.parse_args(argv)
    if args.command == "engine":
        from fastamqp import engine_name
        print(engine_name())
        return 0
    from fastamqp import selfcheck
    return selfcheck.main(args.number)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
