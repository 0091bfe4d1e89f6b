"""Smoke test of benchmarks/e2e.py: a --quick run of both fastamqp engines (no original
driver, no RabbitMQ) must finish within a minute and lose or duplicate nothing.

    .venv/bin/pytest benchmarks/test_e2e_smoke.py
"""
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def test_e2e_quick_c_and_python(tmp_path):
    out = tmp_path / "e2e.json"
    started = time.monotonic()
    run = subprocess.run(
        [sys.executable, os.path.join(HERE, "e2e.py"), "--quick", "--only", "c,python",
         "--json", str(out)], capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - started
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    data = json.loads(out.read_text())
    assert not data["failures"]
    rows = data["runs"]
    engines = {r["driver"] for r in rows}
    assert engines == {"c", "python"}
    assert {r["workload"] for r in rows} == {"call1", "call10", "cast10", "fanout",
                                             "notify"}
    for r in rows:
        assert "error" not in r, r
        assert r["ok"], r["problems"]
        assert r["sent"] > 0 and r["lost"] == 0 and r["duplicates"] == 0, r
        assert r["delivered"] == r["expected"], r
        assert r["rate"] > 0
    # The engines that ran are the ones asked for.
    info = data["conditions"]["driver_info"]
    assert info["c"]["client"]["fastamqp_engine"] == "c"
    assert info["python"]["client"]["fastamqp_engine"] == "python"
    assert elapsed < 60, "the quick run took %.0f s" % elapsed


def test_e2e_detects_loss_and_duplicates(tmp_path):
    """The receivers' counts are what the verdict rests on: make them forget and repeat
    messages (FASTAMQP_E2E_INJECT) and the run must fail, naming both."""
    out = tmp_path / "e2e.json"
    env = dict(os.environ, FASTAMQP_E2E_INJECT="lose:40,dup:60")
    run = subprocess.run(
        [sys.executable, os.path.join(HERE, "e2e.py"), "--quick", "--only", "c",
         "--workloads", "cast10", "--json", str(out)],
        capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 1, run.stdout[-3000:] + run.stderr[-3000:]
    assert "FAILED" in run.stdout
    (row,) = json.loads(out.read_text())["runs"]
    assert row["lost"] > 0 and row["duplicates"] > 0 and not row["ok"]
