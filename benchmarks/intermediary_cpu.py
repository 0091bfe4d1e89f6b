#!/usr/bin/env python3
"""CPU per forwarded message of the embedded intermediary's own thread.

    .venv/bin/python benchmarks/intermediary_cpu.py [--count N] [--tree DIR] [--mode router|broker]

Runs the intermediary in-process, one C-engine (or pure, if that is all there is) sender
and receiver connection, and sends ``--count`` small messages one at a time, alternately
unsettled and pre-settled. Prints the CPU time of the thread named
``fastamqp-intermediary`` (its pthread CPU clock, so the clients' threads in the same
process are not counted) per message, and the wall time. ``--tree`` imports fastamqp from
another checkout (``git worktree add /tmp/old HEAD~1``) for a side-by-side A/B in one run.
"""
import argparse
import sys
import threading
import time


def measure(mode, count):
    from fastamqp import engine
    from fastamqp.engine.interface import ConnectionSettings, Host, Outcome
    from fastamqp.intermediary import Intermediary

    with Intermediary(mode=mode) as im:
        host = Host("127.0.0.1", im.port)
        rx = engine.Connection([host], ConnectionSettings(container_id="cpu-rx"))
        rx.start()
        rx.wait_active(5)
        sub = rx.subscribe(["bench/cpu"], 200)
        tx = engine.Connection([host], ConnectionSettings(container_id="cpu-tx"))
        tx.start()
        tx.wait_active(5)
        deadline = time.monotonic() + 10
        while im.counters["links"] < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        got = [0]

        def receive():
            while got[0] < count:
                batch = sub.poll(100, 5)
                if not batch:
                    return
                for d in batch:
                    sub.settle(d, Outcome.ACCEPTED)
                    got[0] += 1
        receiver = threading.Thread(target=receive)
        receiver.start()
        loop = next(t for t in threading.enumerate() if t.name == "fastamqp-intermediary")
        clock = time.pthread_getcpuclockid(loop.ident)
        payload = b"\x00Sw\xa1\x05hello"
        cpu0, wall0 = time.clock_gettime(clock), time.monotonic()
        for i in range(count):
            tx.send("bench/cpu", payload, presettled=bool(i % 2),
                    deadline=time.monotonic() + 10)
        receiver.join()
        cpu1, wall1 = time.clock_gettime(clock), time.monotonic()
        tx.close()
        rx.close()
        if got[0] != count:
            raise SystemExit(f"{mode}: received {got[0]} of {count}")
        return 1e6 * (cpu1 - cpu0) / count, wall1 - wall0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=4000)
    ap.add_argument("--mode", choices=("router", "broker", "both"), default="both")
    ap.add_argument("--tree", help="import fastamqp from this checkout")
    a = ap.parse_args()
    if a.tree:
        sys.path.insert(0, a.tree)
    import fastamqp
    modes = ("router", "broker") if a.mode == "both" else (a.mode,)
    for mode in modes:
        us, wall = measure(mode, a.count)
        print(f"{mode}: intermediary thread CPU {us:.1f} us/msg, {a.count} messages in "
              f"{wall:.2f} s  ({fastamqp.__file__})", flush=True)


if __name__ == "__main__":
    main()
