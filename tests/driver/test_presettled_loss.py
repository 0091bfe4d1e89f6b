"""Pre-settled casts are lost at a congested router, unsettled ones never (issue 14).

A burst of casts from 4 threads at one slow RPC server (one worker, stuck for the first
second of the burst, then 1 ms a cast) through the embedded router, over oslo.messaging with explicit settings, on each connection engine
and each intermediary data path (Python ``Intermediary``, C ``Relay``): with
``pre_settled = rpc-cast,rpc-reply`` the router discards what the server's link cannot
take, as qdrouterd 1.19 does (docs/relay.md), ``linkCapacity - 1`` = 249 at a time, and
its ``dropped_presettled`` counter is exactly what the server missed; with
``pre_settled = rpc-reply`` (casts unsettled) nothing is lost. The burst is
benchmarks/presettled_burst.py's, which runs the same against a real qdrouterd
(docs/reliability.md, "Pre-settled casts through a router").
"""
import importlib.util
import os

import pytest

from fastamqp.intermediary import Intermediary, relay, routing
from support import paths

ROOT = paths.ROOT
_spec = importlib.util.spec_from_file_location(
    "fastamqp_presettled_burst", os.path.join(ROOT, "benchmarks", "presettled_burst.py"))
presettled_burst = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(presettled_burst)

CASTS = 600      # 100 on the server's credit, 500 for the router: 2 batches go
DELAY = 0.001
DATA_PATHS = [pytest.param(Intermediary, id="python")]
if relay.available():
    DATA_PATHS.append(pytest.param(relay.Relay, id="relay"))


@pytest.fixture(params=DATA_PATHS)
def router(request):
    with request.param(mode="router") as im:
        yield im


def test_presettled_burst_loses_whole_batches(engine, router):
    dropped = lambda: router.counters["dropped_presettled"]     # noqa: E731
    row = presettled_burst.burst(router.url, "presettled", CASTS, delay=DELAY,
                                 done=lambda got: got + dropped() >= CASTS)
    assert row["errors"] == 0 and row["duplicates"] == 0, row
    assert row["lost"] > 0, row
    # Whole batches of linkCapacity - 1 (the head of the list is kept), and the
    # counter is exactly what the server missed.
    assert row["lost"] % (routing.DEFAULT_WINDOW - 1) == 0, row
    assert dropped() == row["lost"], (row, router.counters)


def test_unsettled_burst_loses_nothing(engine, router):
    row = presettled_burst.burst(router.url, "unsettled", CASTS, delay=DELAY,
                                 done=lambda got: got >= CASTS)
    assert row["errors"] == 0 and row["duplicates"] == 0, row
    assert row["lost"] == 0, row
    assert router.counters["dropped_presettled"] == 0
