"""The benchmark script runs end to end (smoke mode: tiny sizes, the numbers mean nothing)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_quick(script: str, out: Path, *args: str) -> subprocess.CompletedProcess:
    """`python scripts/SCRIPT --quick --threads 1 --in-process ARGS --json OUT`, as a user runs it."""
    return subprocess.run([sys.executable, str(ROOT / "scripts" / script), "--quick", "--threads", "1",
                           "--in-process", *args, "--json", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)


@pytest.mark.slow
def test_bench_dqn_quick(tmp_path):
    out = tmp_path / "bench.json"
    proc = run_quick("bench_dqn.py", out, "--only", "cartpole")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "rlbase/SB3" in proc.stdout
    data = json.loads(out.read_text())
    assert data, "the JSON report is empty"


def test_bench_pg_solve_quick(tmp_path):
    """The solve section, including the whole-budget run on rlbase/CartPole-v1 and its 3 s target line."""
    out = tmp_path / "bench_pg.json"
    proc = run_quick("bench_pg.py", out, "--sections", "solve")
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(out.read_text())
    runs = {(r["library"], r["env_id"]): r for r in data["results"]}
    assert set(runs) == {("rlbase", "CartPole-v1"), ("rlbase native", "rlbase/CartPole-v1"), ("SB3", "CartPole-v1")}
    native = runs[("rlbase native", "rlbase/CartPole-v1")]
    assert native["steps"] == 2048 and native["evals"] and native["final_mean_return"] is not None
    assert data["summary"]["rlbase/CartPole-v1"]["median_train_s"] > 0
    assert any("rlbase/CartPole-v1 PPO trains to a solved policy" in t for t in data["summary"]["targets"])


def test_transfer_experiment_is_one_sweep_quick(tmp_path):
    """scripts/maze_transfer.py defines its arms as the cases of one `rlbase sweep` (smoke budgets)."""
    out = tmp_path / "transfer.json"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "maze_transfer.py"), "maze", "--quick", "--seeds", "0",
                           "--arms", "scratch", "frozen", "--workdir", str(tmp_path / "work"), "--json", str(out)],
                          capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(out.read_text())
    assert sorted(run["arm"] for run in data["runs"]) == ["frozen", "scratch"]
    trials = json.loads((tmp_path / "work" / "maze" / "sweep" / "trials.json").read_text())
    configs = {e["case"]: json.loads((Path(e["run_dir"]) / "config.json").read_text())["config"]
               for e in trials.values()}
    assert configs["frozen"]["freeze_backbone"] and configs["frozen"]["backbone_weights"].endswith("pretrained-maze-action")
    assert not configs["scratch"]["backbone_weights"] and not configs["scratch"]["freeze_backbone"]
    # The scratch arm runs on its own, longer budget (--quick: 1024 steps against the others' 512).
    assert (configs["scratch"]["total_timesteps"], configs["frozen"]["total_timesteps"]) == (1024, 512)
    assert [e["case"] for e in sorted(trials.values(), key=lambda e: e["run_dir"])] == ["scratch", "frozen"]
    assert {e["status"] for e in trials.values()} == {"TERMINATED"}
    # The same command again: nothing left to train, and each final checkpoint's saved evaluation
    # (same seed and episodes) is read back, not played again.
    reports = {p: p.stat().st_mtime_ns for p in (tmp_path / "work" / "maze" / "sweep" / "runs").glob("*/eval_step_*.json")}
    assert len(reports) == 2
    again = subprocess.run(proc.args, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert {p: p.stat().st_mtime_ns for p in reports} == reports
    assert json.loads(out.read_text())["runs"] == data["runs"]


@pytest.mark.slow
def test_bench_learning_quick(tmp_path):
    """The wall-clock race: warm-up speed, a schedule for the budget, training stopped by the clock,
    full games on each library's own env stack, and the ratio lines."""
    out, record = tmp_path / "learning.json", tmp_path / "race.jsonl"
    # A race over two sittings: rlbase's run first, then the same race again runs only SB3's.
    proc = run_quick("bench_learning.py", out, "--algos", "ppo", "--rlbase-only", "--results", str(record))
    assert proc.returncode == 0, proc.stderr[-2000:]
    first = json.loads(record.read_text())
    assert first["kind"] == "rlbase" and first["rlbase_revision"]
    assert first["machine"]["probe_s"] > 0 and first["machine"]["cpu"]  # which machine, and its speed
    with record.open("a") as fh:
        fh.write(json.dumps({**first, "scores": "none"}) + "\n")  # hand-edited: not a result
        fh.write('{"kind": "sb3", "algo": "ppo", "wall')  # a run killed while its line was written
    proc = run_quick("bench_learning.py", out, "--algos", "ppo", "--results", str(record))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "1 of the 2 planned runs already recorded; running 1" in proc.stdout
    assert f"{record}:2: not a whole result, skipped" in proc.stdout
    assert f"{record}:3: not a whole result, skipped" in proc.stdout
    assert "ppo rlbase seed 0" not in proc.stdout and "ppo sb3 seed 0" in proc.stdout
    assert json.loads(record.read_text().splitlines()[-1])["kind"] == "sb3"
    data = json.loads(out.read_text())
    assert [r["kind"] for r in data["results"]] == ["rlbase", "sb3"]
    assert data["results"][0]["scores"] == first["scores"]
    runs = {r["kind"]: r for r in data["results"]}
    assert set(runs) == {"rlbase", "sb3"}
    for run in runs.values():
        assert run["warmup_rate"] > 0 and run["steps"] > 0
        assert run["scheduled_steps"] == int(run["warmup_rate"] * run["budget_s"])
        assert len(run["scores"]) == run["games"] and all(s >= 0 for s in run["scores"])
    assert "ppo      rlbase" in proc.stdout


@pytest.mark.slow
def test_bench_pqn_quick(tmp_path):
    out = tmp_path / "pqn.json"
    proc = run_quick("bench_pqn.py", out, "--sections", "cartpole", "--seeds", "0")
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(out.read_text())
    assert {r["algo"] for r in data["results"]} == {"pqn", "ppo"}


@pytest.mark.slow
def test_bench_qheads_quick(tmp_path):
    out = tmp_path / "qheads.json"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_qheads.py"), "--quick", "--seeds", "0",
                           "--only", "dqn,c51,qrdqn", "--json", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert out.read_text().strip(), "the JSON rows are empty"
    assert "c51" in proc.stdout and "qrdqn" in proc.stdout


def test_bench_split_runs_both_ways(tmp_path):
    """scripts/bench_split.py: each agent trains unsplit and split in the same round (tiny budget)."""
    out = tmp_path / "split.json"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_split.py"), "--algos", "pqn", "--num-envs", "2",
                           "--rollouts", "2", "--rounds", "1", "--threads", "1", "--json", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| pqn x2 |" in proc.stdout
    entry = json.loads(out.read_text())["results"]["pqn x2"]
    assert len(entry["one"]) == len(entry["split"]) == len(entry["ratios"]) == 1
    assert entry["one"][0] > 0 and entry["split"][0] > 0
    assert "env" in entry["shares_split"]  # the CPU times the stages, split runs included


def test_warmup_speed_is_read_over_whole_iterations(monkeypatch):
    """bench_learning's warm-up speed of an algorithm that alternates a rollout (marks every vector step)
    with a long update (no marks): read over whole iterations it is the true mean speed whatever the
    phase the warm-up ends at; a window cut anywhere (period 1) is off by up to one update."""
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    from bench_learning import learning_rate_of

    def marks(seconds: float) -> list[tuple[int, float]]:
        """PPO-like: 128 vector steps of 8 env steps in 1.0 s, then a 2.0 s update; the warm-up stops at
        the first step after `seconds` (as the run's callback does)."""
        out, step, now = [], 0, 0.0
        while not out or now - out[0][1] < seconds:
            for _ in range(128):
                now += 1.0 / 128
                step += 8
                out.append((step, now))
                if now - out[0][1] >= seconds:
                    return out
            now += 2.0
        return out

    true_rate = 1024 / 3.0
    errors_whole, errors_any = [], []
    for tenths in range(550, 650, 7):  # warm-ups ending at every phase of the 3 s cycle
        m = marks(tenths / 10)
        errors_whole.append(abs(learning_rate_of(m, 0, period=1024) / true_rate - 1))
        errors_any.append(abs(learning_rate_of(m, 0) / true_rate - 1))
    assert max(errors_whole) < 0.002
    assert max(errors_any) > 0.03  # the old reading, for contrast: the test can tell them apart
    with pytest.raises(RuntimeError, match="whole iteration"):
        learning_rate_of(marks(2.5), 0, period=1024)  # less than one whole iteration in the window
