"""The scale and driver-cost benchmarks still run (tiny versions; no timing asserted):
benchmarks/scale.py and benchmarks/driver_cost.py, whose full runs feed the README's
results (scripts/results)."""
import json
import os
import subprocess
import sys

import pytest

from fastamqp import engine
from support import paths

ROOT = paths.ROOT
pytestmark = pytest.mark.skipif(engine.engine_name() != "c",
                                reason="the benchmarks measure the C engine")


def run(script, *args):
    # The fastamqp this test imports (the installed one in CI), not the source tree.
    import fastamqp
    here = os.path.dirname(os.path.dirname(os.path.abspath(fastamqp.__file__)))
    env = dict(os.environ, PYTHONPATH=here)
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", script),
                           *args], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_scale_runs_and_reports_each_step(tmp_path):
    out = tmp_path / "scale.json"
    run("scale.py", "--servers", "1,4", "--calls", "300", "--json", str(out))
    result = json.loads(out.read_text())
    assert [r["servers"] for r in result["servers"]] == [1, 4]
    assert [r["subscriptions"] for r in result["subscriptions"]] == [1, 4]
    assert result["calls"]["calls"] == 300 and result["calls"]["seconds"] > 0
    assert all(r["attach_ms_per_server"] > 0 and r["rss_mib"] > 0
               for r in result["servers"])


def test_driver_cost_reports_every_row():
    text = run("driver_cost.py", "--count", "200")
    for row in ("codec.encode_request", "Connection.send, pre-settled",
                "ProtonDriver.send", "RPCClient.cast", "Listener.poll + acknowledge"):
        assert row in text, text
