"""ombt 3.0.0 (the Oslo Messaging Benchmark Tool, github.com/kgiusti/ombt; written for
the original AMQP 1.0 driver, docs/ombt.md) end to end on both engines, against the
embedded intermediary: the router (qdrouterd emulation) and the broker (qpidd).

Each ombt program is the `ombt` console script of this test environment (the test
extra installs it with eventlet, which it monkey-patches in but does not declare), run
as a child process on one engine, with small counts. Every run must report every
message it was asked to send, on both sides, with no errors, and every process must
exit by itself with status 0 (a timeout on each one keeps a hang from stalling CI).

* Standalone modes (one process: a server, a client and the controller): ``rpc``,
  ``rpc --cast`` and ``notify``, each through the router and through the broker.
* One distributed run: an ``rpc-server``, an ``rpc-client``, a ``listener`` and a
  ``notifier`` in their own processes; ``controller rpc-call``, ``rpc-cast`` and
  ``notify`` runs; then ``controller shutdown``, after which all four exit. Laid out as
  the deployment docs/ombt.md describes: ombt's control traffic and RPC through the
  router, notifications through the broker.

Through a router, ombt's controller pings (a fanout cast) every kind of ombt client,
including kinds nobody runs -- in the standalone modes, two of the four. qdrouterd, and
the embedded router like it, gives such a sender no credit (DISPATCH-1481); the
standalone runs through the router need fastamqp to drop a fanout cast that has no
receiver instead of failing it after the send timeout.

FASTAMQP_OMBT_ROUTER_URL and FASTAMQP_OMBT_BROKER_URL run the same tests against real
peers instead (a qdrouterd and a qpidd; docs/ombt.md).
"""
import os
import re
import select
import subprocess
import sys
import time
import uuid

import pytest


OMBT = os.path.join(os.path.dirname(sys.executable), "ombt")
CALLS = 50
RUN_TIMEOUT = 120    # one ombt run, standalone or controller (about 6 s when healthy)
READY_TIMEOUT = 60   # a distributed ombt process connected to its control bus
EXIT_TIMEOUT = 30    # a distributed ombt process gone after `controller shutdown`
EXTERNAL_URLS = {"router": os.environ.get("FASTAMQP_OMBT_ROUTER_URL"),
                 "broker": os.environ.get("FASTAMQP_OMBT_BROKER_URL")}

# What each kind of test prints: the client and server kinds it found, then one
# "Aggregated <side> results:" section per side.
RPC_SIDES = ("RPC Client", "RPC Server")
NOTIFY_SIDES = ("Notifier (Client)", "Listener (Server)")
RPC_COUNTS = re.compile(r"^(\d+) RPC clients, (\d+) RPC Servers", re.M)
NOTIFY_COUNTS = re.compile(r"^(\d+) Notifiers, (\d+) Listeners", re.M)

@pytest.fixture(scope="module")
def ombt():
    if not os.path.exists(OMBT):
        message = f"{OMBT} is missing: the test extra installs ombt (scripts/setup-env)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return OMBT


def bus_url(request, bus):
    """The URL of the "router" or the "broker": a real one when the environment names
    it, otherwise the embedded intermediary in that mode, for this test."""
    return EXTERNAL_URLS[bus] or request.getfixturevalue(bus).url


def own_topic():
    # ombt's control and test addresses derive from --topic: a topic of its own keeps
    # a test clear of any other ombt run on the same (real) peers.
    return "test-" + uuid.uuid4().hex[:12]


def run_ombt(ombt, engine, cwd, *argv):
    """One ombt run to its end: its stdout, after checking that it exited by itself
    with status 0."""
    try:
        result = subprocess.run([ombt, *argv], env=engine.child_env(), cwd=cwd,
                                capture_output=True, text=True, timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"ombt {' '.join(argv)} did not exit within {RUN_TIMEOUT} s:\n"
                    f"{_text(exc.stdout)[-3000:]}\n{_text(exc.stderr)[-3000:]}")
    assert result.returncode == 0, \
        f"ombt {' '.join(argv)}: exit {result.returncode}\n" \
        f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def _text(output):
    if isinstance(output, bytes):
        return output.decode(errors="replace")
    return output or ""


def check_results(output, counts_line, sides, messages):
    """Exactly one client and one server took part, and each side reports every one of
    ``messages``, all of them with a latency, and no failed transfer or error."""
    counts = counts_line.search(output)
    assert counts and counts.groups() == ("1", "1"), output
    assert not re.search(r"^Error", output, re.M), output
    figures = []
    for side in sides:
        header = f"Aggregated {side} results:"
        assert output.count(header) == 1, output
        section = output.split(header, 1)[1]
        next_side = section.find("Aggregated ")
        section = section if next_side < 0 else section[:next_side]
        total = re.search(r"^Total Messages: (\d+)$", section, re.M)
        assert total and int(total.group(1)) == messages, output
        latency = re.search(r"^Latency (\d+) samples \(msecs\): Average ([\d.]+)",
                            section, re.M)
        assert latency and int(latency.group(1)) == messages, output
        rate = re.search(r"^Aggregate throughput: ([\d.]+) msgs/sec", section, re.M)
        figures.append("%s %s msgs/s avg %.2f ms" % (
            side, "%.0f" % float(rate.group(1)) if rate else "-",
            float(latency.group(2))))
    print("\nFIGURES ombt:", "; ".join(figures))


STANDALONE = [
    pytest.param(["rpc", "--calls", str(CALLS)], RPC_COUNTS, RPC_SIDES, id="rpc"),
    pytest.param(["rpc", "--calls", str(CALLS), "--cast"], RPC_COUNTS, RPC_SIDES,
                 id="rpc-cast"),
    pytest.param(["notify", "--calls", str(CALLS)], NOTIFY_COUNTS, NOTIFY_SIDES,
                 id="notify"),
]


# Through the router ombt's controller pings kinds of clients nobody runs: a fanout
# with no receiver, which the driver drops (issue 17) instead of failing the run.
@pytest.mark.parametrize("bus", ["broker", "router"])
@pytest.mark.parametrize("mode, counts_line, sides", STANDALONE)
def test_standalone(ombt, engine, mode, counts_line, sides, bus, request, tmp_path):
    output = run_ombt(ombt, engine, tmp_path, "--url", bus_url(request, bus),
                      "--topic", own_topic(), *mode)
    check_results(output, counts_line, sides, CALLS)


class DistributedProcess:
    """One long-running ombt process (rpc-server, rpc-client, listener, notifier).

    ombt's ``--daemon`` re-runs the command with ``-X-daemon``, waits for the child to
    write "... is ready" on its stdout (once it is connected to the control bus), and
    leaves it detached. This runs that child directly: the same handshake says when it
    is ready, and it stays this test's child, so its exit status can be checked.
    It sends its stdout and stderr to /dev/null from then on; its log goes to a file.
    """

    def __init__(self, ombt, engine, cwd, kind, url, control, topic):
        self.kind = kind
        self.log_prefix = os.path.join(cwd, kind + "-")
        self.stderr = open(os.path.join(cwd, kind + ".stderr"), "w+")
        self.proc = subprocess.Popen(
            [ombt, "--url", url, "--control", control, "--topic", topic,
             "--logfile-prefix", self.log_prefix, kind, "-X-daemon"],
            env=engine.child_env(), cwd=cwd, stdout=subprocess.PIPE,
            stderr=self.stderr, text=True)

    def wait_ready(self):
        readable, _, _ = select.select([self.proc.stdout], [], [], READY_TIMEOUT)
        line = self.proc.stdout.readline() if readable else ""
        assert line.endswith("is ready\n"), \
            f"{self.kind} not ready within {READY_TIMEOUT} s: {line!r}\n{self.output()}"

    def wait_exit(self, deadline):
        try:
            code = self.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self.kind} still running {EXIT_TIMEOUT} s after "
                        f"`controller shutdown`\n{self.output()}")
        assert code == 0, f"{self.kind}: exit {code}\n{self.output()}"

    def output(self):
        self.stderr.seek(0)
        text = self.stderr.read()[-2000:]
        log = self.log_prefix + str(self.proc.pid)
        if os.path.exists(log):
            with open(log) as f:
                text += f"\nlog {log}:\n" + f.read()[-3000:]
        return text

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        self.stderr.close()


def test_distributed(ombt, engine, request, tmp_path):
    # Control and RPC through the router, notifications through the broker.
    router, broker = bus_url(request, "router"), bus_url(request, "broker")
    topic = own_topic()
    processes = []
    try:
        for kind, url in (("rpc-server", router), ("rpc-client", router),
                          ("listener", broker), ("notifier", broker)):
            processes.append(DistributedProcess(ombt, engine, str(tmp_path), kind, url,
                                                control=router, topic=topic))
        for process in processes:
            process.wait_ready()

        def controller(*test):
            return run_ombt(ombt, engine, tmp_path, "--url", router, "--topic", topic,
                            "controller", *test)

        check_results(controller("rpc-call", "--calls", str(CALLS)),
                      RPC_COUNTS, RPC_SIDES, CALLS)
        check_results(controller("rpc-cast", "--calls", str(CALLS)),
                      RPC_COUNTS, RPC_SIDES, CALLS)
        check_results(controller("notify", "--events", str(CALLS)),
                      NOTIFY_COUNTS, NOTIFY_SIDES, CALLS)
        controller("shutdown")
        deadline = time.monotonic() + EXIT_TIMEOUT
        for process in processes:
            process.wait_exit(deadline)
    finally:
        for process in processes:
            process.kill()
