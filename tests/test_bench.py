"""The benchmark script runs end to end (smoke mode: tiny sizes, the numbers mean nothing)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_dqn_quick(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_dqn.py"), "--quick", "--threads", "1",
                           "--in-process", "--only", "cartpole", "--json", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "rlbase/SB3" in proc.stdout
    data = json.loads(out.read_text())
    assert data, "the JSON report is empty"
