"""benchmarks/front_path.py keeps working: the server's pieces it builds on still fit together, and
every request of every round gets its answer, with and without batching (a few rounds, no timing)."""

from __future__ import annotations

import math
import sys

import pytest
import uvloop

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))

import front_path  # noqa: E402


@pytest.mark.parametrize("batch", [1, 8])
def test_the_front_path_ruler_answers_every_request(batch):
    micros = uvloop.run(front_path.measure(connections=8, batch=batch, rounds=20, repeats=2, profile=0))
    assert math.isfinite(micros) and micros > 0
