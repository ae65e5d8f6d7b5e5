"""How `rlbase sweep` starts and uses its local Ray (rlbase/sweep_ray.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray.tune")

TRIAL_PROCESS = """
import json, os, sys, time
from pathlib import Path
os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
from rlbase.sweep_ray import start_ray, stop_ray, trials_in_prestarted_workers

def idle_workers():
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::IDLE"):
                found.append(int(pid))
        except OSError:
            pass
    return found

start_ray(None, num_cpus=2)
deadline = time.monotonic() + 60
while not (idle := idle_workers()) and time.monotonic() < deadline:
    time.sleep(0.2)
from ray import tune
from ray.tune.execution.class_cache import DEFAULT_ENV_VARS
before = dict(DEFAULT_ENV_VARS)
def trial(config):
    tune.report({"pid": os.getpid()})
tuner = tune.Tuner(tune.with_resources(trial, {"cpu": 1}),
                   run_config=tune.RunConfig(storage_path=sys.argv[1], verbose=0))
with trials_in_prestarted_workers():
    results = tuner.fit()
stop_ray()
print(json.dumps({"idle": idle, "trial": results[0].metrics["pid"], "restored": DEFAULT_ENV_VARS == before}))
"""


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="lists Ray's workers in /proc")
def test_trial_actors_start_in_the_workers_ray_prestarted(tmp_path):
    # Ray pre-starts a Python worker per CPU at ray.init; Tune's trial actors, created with a runtime env
    # of their own, used to start new ones beside them (1.5-2 s each here). Under rlbase's context they
    # take a pre-started worker, and Tune's settings are as they were afterwards.
    proc = subprocess.run([sys.executable, "-c", TRIAL_PROCESS, str(tmp_path)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["idle"], "no pre-started Ray worker was seen"
    assert seen["trial"] in seen["idle"], f"the trial ran in a new worker {seen['trial']}, not in {seen['idle']}"
    assert seen["restored"]
