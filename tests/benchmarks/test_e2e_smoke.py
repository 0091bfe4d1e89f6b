"""Smoke test of benchmarks/e2e.py: a --quick run of both fastamqp engines (no original
driver, no RabbitMQ) must finish within a minute and lose or duplicate nothing but what
the router itself counted as pre-settled messages it dropped (issue 14); and of the raw
Proton C request/response floor (benchmarks/rr_floor.py) through the embedded relay.

    pytest -m bench_smoke benchmarks/test_e2e_smoke.py     (from tests/: tests/README.md)
"""
import json
import os
import subprocess
import sys
import time

import pytest

from support import paths

# Longer runs of the benchmark scripts: not part of scripts/test (as before they moved
# here from benchmarks/); run them with -m bench_smoke (tests/README.md).
pytestmark = pytest.mark.bench_smoke

HERE = paths.BENCHMARKS        # the scripts under test
sys.path.insert(0, HERE)
import rr_floor  # noqa: E402


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
    floors = [r for r in rows if r["driver"] in ("floor", "floor-direct")]
    rows = [r for r in rows if r not in floors]
    engines = {r["driver"] for r in rows}
    assert engines == {"c", "python"}
    assert {r["workload"] for r in rows} == {"call1", "call10", "cast10", "fanout",
                                             "notify"}
    for r in rows:
        assert "error" not in r, r
        # Pre-settled casts (the driver's default here) through a router that runs
        # out of room: its own count of what it dropped must be the loss, exactly.
        if r["lost"]:
            assert r["router_drop"] and r["tolerated"], r
            assert r["router_dropped_presettled"] == r["lost"], r
        else:
            assert r["ok"], r["problems"]
            assert r["delivered"] == r["expected"], r
        assert r["sent"] > 0 and r["duplicates"] == 0, r
        assert r["rate"] > 0
    if data["conditions"].get("floor_unavailable") is None:
        assert {r["driver"] for r in floors} == {"floor", "floor-direct"}
        assert all(r["ok"] and r["p50_ms"] > 0 for r in floors), floors
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


def test_floor_through_the_relay():
    """benchmarks/rr_floor.py: compiled on first use, a few hundred round trips through
    the embedded C relay and with no intermediary, all answered."""
    from fastamqp.intermediary import relay
    if not relay.available():
        pytest.skip("the relay is not built")
    try:
        exe = rr_floor.build()
    except rr_floor.FloorUnavailable as e:
        pytest.skip(str(e))
    with relay.Relay(mode="router") as r:
        through = rr_floor.measure(r.url, count=300, exe=exe, timeout=30)
        assert r.counters["forwarded"] >= 2 * (300 + 20)     # requests and replies
    direct = rr_floor.measure(None, count=300, exe=exe, timeout=30)
    for res in (through, direct):
        assert res["count"] == 300 and res["size"] == 1024, res
        assert 0 < res["p50_us"] <= res["p99_us"] and res["rate"] > 0, res
        assert res["cpu_client_s"] is not None, res
