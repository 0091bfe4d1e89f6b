"""py-spy support for benchmarks/e2e.py --profile: sample the client, the server(s) and
the intermediary of one driver during each phase, then say where their CPU went.

    .venv/bin/python benchmarks/e2e.py --only c --profile /tmp/prof
    .venv/bin/python benchmarks/e2e_profile.py /tmp/prof/*.raw     # summaries again

py-spy is looked up as $PY_SPY, then ``py-spy`` on PATH, then /tmp/pyspy/bin/py-spy
(``pip install --target /tmp/pyspy py-spy``). Samples are taken without --idle (only
threads that are running, not those blocked in select/poll or on a lock) and without
--native, so time spent inside a C extension (the C engine's _io.so, the C codecs,
Proton C under python-qpid-proton) is charged to the Python function that called it.
Each sample is attributed by its innermost (leaf) Python frame to a layer.
"""
import collections
import os
import shutil
import signal
import subprocess
import sys

LAYERS = [
    # (layer, substrings of the leaf frame's file name), first match wins
    ("fastamqp connection front (both engines)", ("fastamqp/engine/front.py", "fastamqp/engine/control.py")),
    ("fastamqp C engine (_io.so)", ("fastamqp/engine/c/",)),
    ("fastamqp pure-Python engine", ("fastamqp/engine/pure/",)),
    ("fastamqp intermediary", ("fastamqp/intermediary/",)),
    ("fastamqp driver (driver.py, codec, ...)", ("fastamqp/",)),
    ("python-qpid-proton / cffi", ("/proton/", "cproton", "_cffi")),
    ("pyngus", ("pyngus/",)),
    ("oslo.messaging", ("oslo_messaging/",)),
    ("other oslo libs (context, serialization, utils, config)", ("oslo_",)),
    ("kombu / py-amqp", ("kombu/", "/amqp/")),
    ("json", ("json/",)),
    ("threading, queue, futures (stdlib)", ("threading.py", "queue.py",
                                             "concurrent/futures", "selectors.py")),
    ("e2e workload code", ("e2e_worker.py",)),
]


def py_spy():
    for cand in (os.environ.get("PY_SPY"), shutil.which("py-spy"),
                 "/tmp/pyspy/bin/py-spy"):
        if cand and os.access(cand, os.X_OK):
            return cand
    return None


def start(pid, output, rate=200):
    exe = py_spy()
    env = dict(os.environ)
    if exe == "/tmp/pyspy/bin/py-spy":
        env["PYTHONPATH"] = "/tmp/pyspy"
    return subprocess.Popen(
        [exe, "record", "--pid", str(pid), "--format", "raw", "--output", output,
         "--rate", str(rate), "--full-filenames", "--nolineno", "--nonblocking",
         "--gil"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _leaf_file(frame):
    # "function (/path/to/file.py)" (--nolineno)
    if frame.endswith(")") and " (" in frame:
        return frame[frame.rindex(" (") + 2:-1]
    return frame


def layer_of(path):
    for name, keys in LAYERS:
        if any(k in path for k in keys):
            return name
    return "other (stdlib, ...)"


def summarize(path):
    """{layer: samples} and the top leaf functions of one raw py-spy file."""
    layers = collections.Counter()
    leaves = collections.Counter()
    total = 0
    try:
        with open(path) as f:
            for line in f:
                stack, _, count = line.rstrip("\n").rpartition(" ")
                if not stack or not count.isdigit():
                    continue
                n = int(count)
                leaf = stack.split(";")[-1]
                layers[layer_of(_leaf_file(leaf))] += n
                leaves[leaf] += n
                total += n
    except OSError:
        pass
    return {"samples": total, "layers": dict(layers.most_common()),
            "top": leaves.most_common(12)}


def format_summary(title, s):
    lines = ["%s: %d samples" % (title, s["samples"])]
    if not s["samples"]:
        return "\n".join(lines)
    for name, n in s["layers"].items():
        lines.append("  %5.1f %%  %s" % (100.0 * n / s["samples"], name))
    lines.append("  top leaf functions:")
    for leaf, n in s["top"][:8]:
        lines.append("  %5.1f %%    %s" % (100.0 * n / s["samples"], leaf))
    return "\n".join(lines)


if __name__ == "__main__":
    for p in sys.argv[1:]:
        print(format_summary(os.path.basename(p), summarize(p)))
        print()
