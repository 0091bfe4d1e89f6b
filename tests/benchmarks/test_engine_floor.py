"""Smoke test of benchmarks/engine_floor.py: a tiny run through both intermediary modes
must finish, cover every available engine, and report no lost or duplicated message.

Not a timing test: it asserts nothing about speed and does not use the ``benchmark``
fixture, so ``--benchmark-only`` skips it and ``--benchmark-skip`` runs it.

    pytest -m bench_smoke benchmarks/test_engine_floor.py     (from tests/: tests/README.md)
"""
import json
import os
import subprocess
import sys

import pytest

from support import paths

# Longer runs of the benchmark scripts: not part of scripts/test (as before they moved
# here from benchmarks/); run them with -m bench_smoke (tests/README.md).
pytestmark = pytest.mark.bench_smoke

SCRIPT = os.path.join(paths.BENCHMARKS, "engine_floor.py")


def test_engine_floor_smoke(tmp_path):
    pytest.importorskip("proton")
    out = tmp_path / "engine_bench.json"
    env = dict(os.environ)
    # The child imports the same fastamqp as this test does.
    import fastamqp
    root = os.path.dirname(os.path.dirname(os.path.abspath(fastamqp.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(
        [root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    proc = subprocess.run(
        [sys.executable, SCRIPT, "--count", "60", "--calls", "20", "--threads", "2",
         "--budget", "20", "--json", str(out)],
        env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["ok"] and not result["failures"]
    engines = result["info"]["engines"]
    assert "python" in engines
    cases = {(r["mode"], r["client"], r["settle"]) for r in result["oneway"]}
    for mode in ("broker", "router"):
        for engine in engines:
            assert (mode, engine, "unsettled") in cases
            assert (mode, engine, "presettled") in cases
        if result["info"]["raw_proton_c"]:
            assert (mode, "raw-c", "unsettled") in cases
    for row in result["oneway"]:
        assert row["ok"] and row["duplicates"] == 0, row
        # Only pre-settled messages the router counted as dropped may be missing.
        dropped = row["router_dropped_presettled"] if row.get("router_drop") else 0
        assert row["missing"] == dropped, row
        assert row["received"] + dropped == row["count"] > 0, row
    assert {r["client"] for r in result["rpc"]} == set(engines)
    for row in result["rpc"]:
        assert row["ok"] and row["calls"] > 0, row


def test_engine_floor_fails_loudly_on_loss_and_duplicates(tmp_path):
    """The hook makes the sender send message 3 twice and message 7 never."""
    out = tmp_path / "engine_bench.json"
    env = dict(os.environ, FASTAMQP_BENCH_INJECT="lose:7,dup:3")
    import fastamqp
    root = os.path.dirname(os.path.dirname(os.path.abspath(fastamqp.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(
        [root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    proc = subprocess.run(
        [sys.executable, SCRIPT, "--count", "20", "--threads", "2", "--no-raw",
         "--engines", "python", "--oneway-modes", "broker", "--rpc-modes",
         "--json", str(out)],
        env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "FAILED" in proc.stderr and "1 missing" in proc.stderr \
        and "1 duplicates" in proc.stderr
    result = json.loads(out.read_text())
    assert not result["ok"]
    assert all(row["missing"] == 1 and row["duplicates"] == 1 and not row["ok"]
               for row in result["oneway"])
