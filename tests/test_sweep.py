"""`rlbase sweep`: search-space parsing and its one-line errors, and real sweeps on a local Ray (the
console script, as a user runs it): the results table, trial run dirs, best_config.yaml through
`rlbase train --config`, Optuna + ASHA, resume of a trial that ended unrecorded, and a Ray cluster joined
with --address."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import tempfile

import pytest

from rlbase.agents.ppo import PPOConfig
from rlbase.errors import UsageError
from rlbase.space import draw_trials, parse_seeds, parse_space
from tests.test_cli import assert_ok, assert_one_line_error, rlbase_command, run_cli

TINY = ["--env", "rlbase/CartPole-v1", "--num-envs", "16", "--num-steps", "16", "--update-epochs", "1",
        "--num-minibatches", "1", "--log-interval", "1024"]


# ---------------------------------------------------------------- inputs
@pytest.mark.parametrize("text,seeds", [("0-3", [0, 1, 2, 3]), ("5", [5]), ("0,3,7", [0, 3, 7]),
                                        ("0-2,10,1", [0, 1, 2, 10])])
def test_parse_seeds(text, seeds):
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize("text", ["", "a", "3-1", "-1", "0-x", str(2**32)])
def test_parse_seeds_refuses(text):
    with pytest.raises(UsageError, match="--seeds"):
        parse_seeds(text)


@pytest.mark.parametrize("space,message", [
    ({"learning_rat": {"uniform": [0.1, 0.2]}}, "not a config field"),
    ({"seed": {"grid": [1, 2]}}, "--seeds"),
    ({"learning_rate": {"normal": [0, 1]}}, "one of grid, choice"),
    ({"learning_rate": {"uniform": [0.2, 0.1]}}, "low < high"),
    ({"learning_rate": {"loguniform": [0.0, 0.1]}}, "low > 0"),
    ({"num_steps": {"randint": [2.5, 9]}}, "integers"),
    ({"num_steps": {"choice": []}}, "non-empty list"),
])
def test_parse_space_refuses(space, message):
    with pytest.raises(UsageError, match=message):
        parse_space(space, PPOConfig)


def test_draw_trials_crosses_grid_samples_and_seeds():
    space = parse_space({"ent_coef": {"grid": [0.0, 0.01]}, "learning_rate": {"loguniform": [1e-4, 1e-2]},
                         "num_steps": {"randint": [8, 17]}, "clip_coef": 0.3}, PPOConfig)
    trials = draw_trials(space, [0, 1], num_samples=3, search_seed=5)
    assert len(trials) == 2 * 3 * 1 * 2  # ent_coef grid x samples x clip_coef (fixed) x seeds
    assert [t["seed"] for t in trials[:2]] == [0, 1] and trials[0]["values"] == trials[1]["values"]
    assert {t["values"]["ent_coef"] for t in trials} == {0.0, 0.01}
    assert all(1e-4 <= t["values"]["learning_rate"] <= 1e-2 and 8 <= t["values"]["num_steps"] <= 16
               and t["values"]["clip_coef"] == 0.3 for t in trials)
    assert len({t["values"]["learning_rate"] for t in trials}) == 6  # a fresh draw per sample
    assert trials == draw_trials(space, [0, 1], num_samples=3, search_seed=5)  # reproducible
    assert trials != draw_trials(space, [0, 1], num_samples=3, search_seed=6)


def test_cases_are_named_sets_of_values_crossed_with_the_rest():
    space = parse_space({"cases": {"scratch": {}, "frozen": {"freeze_backbone": True, "backbone_lr_scale": 0.5}},
                         "ent_coef": {"grid": [0.0, 0.01]}}, PPOConfig)
    trials = draw_trials(space, [0, 1], num_samples=1, search_seed=0)
    assert len(trials) == 2 * 2 * 2
    frozen = [t for t in trials if t["case"] == "frozen"]
    assert len(frozen) == 4 and all(t["values"]["freeze_backbone"] and t["values"]["backbone_lr_scale"] == 0.5
                                    for t in frozen)
    assert all("freeze_backbone" not in t["values"] for t in trials if t["case"] == "scratch")
    for bad, message in [({"cases": []}, "map case names"), ({"cases": {"a": {"learning_rat": 1}}}, "learning_rat"),
                         ({"cases": {"a": {"seed": 1}}}, "seed"), ({"cases": {"a": 3}}, "NAME")]:
        with pytest.raises(UsageError, match=message):
            parse_space(bad, PPOConfig)


@pytest.mark.parametrize("args,fragment", [
    (("--space", "{space}"), "learning_rat"),
    (("--search", "optuna"), "needs a --space"),
    (("--seeds", "3-1"), "--seeds"),
    (("--learning-rate", "-1"), "--learning-rate"),
])
def test_bad_sweeps_are_one_line_errors(tmp_path, args, fragment):
    space = tmp_path / "space.yaml"
    space.write_text("learning_rat: {uniform: [0.1, 0.2]}\n")
    args = [a.replace("{space}", str(space)) for a in args]
    proc = run_cli("sweep", "ppo", *TINY, "--log-dir", tmp_path / "sweeps", *args, cwd=tmp_path)
    assert fragment in assert_one_line_error(proc, 2)
    assert not (tmp_path / "sweeps").exists() or not any((tmp_path / "sweeps").iterdir())


def run_without_ray(tmp_path: Path, *args: object) -> subprocess.CompletedProcess:
    """The console script with a stand-in `ray` package that cannot be imported."""
    fake = tmp_path / "no-ray"
    (fake / "ray").mkdir(parents=True, exist_ok=True)
    (fake / "ray" / "__init__.py").write_text("raise ImportError('no ray here')\n")
    env = dict(os.environ, PYTHONPATH=str(fake), OMP_NUM_THREADS="1")
    return subprocess.run([*rlbase_command(), *map(str, args)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)


def test_ray_unavailable_is_one_line(tmp_path):
    proc = run_without_ray(tmp_path, "sweep", "ppo", *TINY, "--log-dir", tmp_path / "s")
    assert "pip install 'rlbase[sweep]'" in assert_one_line_error(proc, 2)


def test_the_driver_starts_ray_without_importing_torch(tmp_path):
    # Only the trials train: the driver parses, validates every value the space can produce and starts
    # Ray with no torch imported (~1 s of its start-up). A stand-in Ray records what was imported when
    # the sweep called ray.init, then refuses, which the command reports in one line.
    fake = tmp_path / "fake"
    (fake / "ray").mkdir(parents=True)
    (fake / "ray" / "__init__.py").write_text(
        "import json, sys\n"
        "def is_initialized():\n    return False\n"
        "def init(**kwargs):\n"
        f"    open({str(tmp_path / 'imported.json')!r}, 'w').write(json.dumps(sorted(\n"
        "        m for m in ('torch', 'rlbase.agents.ppo', 'rlbase.checkpoint', 'rlbase.run') if m in sys.modules)))\n"
        "    raise ConnectionError('stand-in Ray')\n")
    (tmp_path / "space.yaml").write_text("learning_rate: {grid: [0.001, 0.003]}\ncases: {a: {}, b: {ent_coef: 0.0}}\n")
    env = dict(os.environ, PYTHONPATH=str(fake), OMP_NUM_THREADS="1")
    proc = subprocess.run([*rlbase_command(), "sweep", "ppo", *TINY, "--space", "space.yaml", "--seeds", "0-1",
                           "--log-dir", str(tmp_path / "s")], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert "cannot start Ray: stand-in Ray" in assert_one_line_error(proc, 1)
    assert json.loads((tmp_path / "imported.json").read_text()) == []


# ---------------------------------------------------------------- real sweeps
def trials(sweep_dir: Path) -> dict:
    return json.loads((sweep_dir / "trials.json").read_text())


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def processes_of_session(sid: int) -> list[str]:
    """The live processes of session `sid`, read from /proc: a command started in a session of its own
    and everything it started (Ray's head, agents and workers stay in their driver's session)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile
            continue
        if int(fields[3]) == sid and fields[0] != "Z":  # stat fields 6 (session) and 3 (state)
            found.append(f"{pid}: {cmdline.strip()[:100]}")
    return found


@pytest.fixture(scope="module")
def grid_sweep(tmp_path_factory) -> Path:
    """4 trials: 2 learning rates x 2 seeds, 2048 steps each. Beside the sweep directory,
    ray_after_exit.json lists the Ray processes of the sweep still running after its command ended."""
    root = tmp_path_factory.mktemp("sweeps")
    (root / "space.yaml").write_text("learning_rate: {grid: [0.001, 0.003]}\n")
    # The console script in a session of its own, as a user's shell starts it: the Ray processes it starts
    # stay in that session, so what is left of it after it exits can be listed.
    env = dict(os.environ, OMP_NUM_THREADS="1", NO_COLOR="1")
    with subprocess.Popen([*rlbase_command(), "sweep", "ppo", *TINY, "--total-timesteps", "2048", "--seeds", "0-1",
                           "--space", "space.yaml", "--log-dir", str(root / "sweeps"), "--name", "grid"],
                          cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as popen:
        stdout, stderr = popen.communicate(timeout=600)
    proc = subprocess.CompletedProcess(popen.args, popen.returncode, stdout, stderr)
    left = None
    if Path("/proc/self/stat").exists():
        deadline = time.monotonic() + 5  # ray.shutdown has returned; a killed worker may still be exiting
        while (left := processes_of_session(popen.pid)) and time.monotonic() < deadline:
            time.sleep(0.2)
    (root / "ray_after_exit.json").write_text(json.dumps(left))
    (root / "stdout.txt").write_text(proc.stdout)
    assert_ok(proc)
    assert "4 trials finished of 4" in proc.stderr
    return root / "sweeps" / "grid"


def test_the_sweep_prints_rlbase_lines_not_tunes_tables(grid_sweep):
    # rlbase's lines go to stderr; Tune's own reporter (a configuration box, a results path) stays quiet.
    assert (grid_sweep.parent.parent / "stdout.txt").read_text().strip() == ""


def test_a_finished_sweep_leaves_no_ray_process_behind(grid_sweep):
    # The console script ends with os._exit; without ray.shutdown Ray's agents and the trial actor
    # went on after the command returned (ps: the actor for ~10 s, the agents for about a minute).
    left = json.loads((grid_sweep.parent.parent / "ray_after_exit.json").read_text())
    if left is None:
        pytest.skip("needs /proc to list processes")
    assert left == []


def test_sweep_writes_results_and_ordinary_run_dirs(grid_sweep, tmp_path):
    rows = list(csv.DictReader((grid_sweep / "results.csv").open()))
    assert len(rows) == 4 and {r["status"] for r in rows} == {"TERMINATED"}
    assert sorted((float(r["learning_rate"]), int(r["seed"])) for r in rows) == [
        (0.001, 0), (0.001, 1), (0.003, 0), (0.003, 1)]
    for row in rows:
        run_dir = Path(row["run_dir"])
        config = json.loads((run_dir / "config.json").read_text())["config"]
        assert config["learning_rate"] == float(row["learning_rate"]) and config["seed"] == int(row["seed"])
        assert config["torch_threads"] == 1  # one thread per trial (--cpus-per-trial 1)
        assert list(run_dir.glob("events.out.tfevents.*")) and (run_dir / "checkpoints" / "latest.json").is_file()
        # What the trial reported through its run callback is what the run logged.
        logged = [r["rollout/ep_rew_mean"] for r in metrics(run_dir) if "rollout/ep_rew_mean" in r]
        assert float(row["final rollout/ep_rew_mean"]) == pytest.approx(logged[-1])
        assert float(row["best rollout/ep_rew_mean"]) == pytest.approx(max(logged))
        assert int(row["steps"]) == 2048
    results = json.loads((grid_sweep / "results.json").read_text())
    assert results["metric"] == "rollout/ep_rew_mean" and len(results["trials"]) == 4
    # A trial is an ordinary run: `rlbase eval` plays it.
    proc = run_cli("eval", rows[0]["run_dir"], "--episodes", "2", "--json", cwd=tmp_path)
    assert_ok(proc)
    assert json.loads(proc.stdout)["global_step"] == 2048


def test_best_config_is_a_config_file_for_train(grid_sweep, tmp_path):
    rows = list(csv.DictReader((grid_sweep / "results.csv").open()))
    means = {}
    for row in rows:
        means.setdefault(float(row["learning_rate"]), []).append(float(row["final rollout/ep_rew_mean"]))
    best_lr = max(means, key=lambda lr: sum(means[lr]) / 2)
    proc = run_cli("train", "ppo", "--config", grid_sweep / "best_config.yaml", "--print-config", cwd=tmp_path)
    assert_ok(proc)
    config = json.loads(proc.stdout)["config"]
    assert config["learning_rate"] == best_lr and config["total_timesteps"] == 2048 and config["num_envs"] == 16
    # Flags still win over the file.
    proc = run_cli("train", "ppo", "--config", grid_sweep / "best_config.yaml", "--num-envs", "8", "--print-config",
                   cwd=tmp_path)
    assert json.loads(proc.stdout)["config"]["num_envs"] == 8
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rat: 0.1\n")
    assert "learning_rat" in assert_one_line_error(run_cli("train", "ppo", "--env", "CartPole-v1", "--config", bad,
                                                           cwd=tmp_path), 2)


def test_report_and_plot_read_the_sweep(grid_sweep, tmp_path):
    proc = run_cli("report", grid_sweep, "--json", cwd=tmp_path)
    assert_ok(proc)
    groups = json.loads(proc.stdout)["groups"]
    assert sorted(g["n_runs"] for g in groups) == [2, 2] and len(groups) == 2  # one group per learning rate
    out = tmp_path / "curves.png"
    assert_ok(run_cli("plot", grid_sweep, "--out", out, cwd=tmp_path))
    assert out.stat().st_size > 1000


def test_a_sweep_of_cases(tmp_path):
    # Not in alphabetical order: the trials follow the file's order, on the first run and on a resume.
    (tmp_path / "arms.yaml").write_text("cases:\n  shared: {shared_backbone: true}\n  plain: {}\n")
    proc = run_cli("sweep", "ppo", *TINY, "--total-timesteps", "1024", "--space", "arms.yaml", "--log-dir", tmp_path,
                   "--name", "arms", cwd=tmp_path, timeout=600)
    assert_ok(proc)
    rows = list(csv.DictReader((tmp_path / "arms" / "results.csv").open()))
    assert sorted(r["case"] for r in rows) == ["plain", "shared"]
    for row in rows:
        config = json.loads((Path(row["run_dir"]) / "config.json").read_text())["config"]
        assert config["shared_backbone"] is (row["case"] == "shared")
    assert trials(tmp_path / "arms")["t0000"]["case"] == "shared"
    sweep_file = tmp_path / "arms" / "sweep.json"
    assert list(json.loads(sweep_file.read_text())["space"]["cases"]) == ["shared", "plain"]
    # Nothing left to do: the results are written again, and no Ray is started (none can be imported here).
    (tmp_path / "arms" / "results.csv").unlink()
    assert_ok(run_without_ray(tmp_path, "sweep", "--resume", tmp_path / "arms"))
    assert list(csv.DictReader((tmp_path / "arms" / "results.csv").open())) == rows
    # A sweep.json whose cases come in another order than its runs were made in (rlbase wrote its keys
    # sorted before): the resume refuses, instead of continuing one arm's runs under another's name.
    spec = json.loads(sweep_file.read_text())
    spec["space"]["cases"] = dict(sorted(spec["space"]["cases"].items()))
    sweep_file.write_text(json.dumps(spec))
    line = assert_one_line_error(run_cli("sweep", "--resume", tmp_path / "arms", cwd=tmp_path, timeout=600), 1)
    assert "no longer match their run dirs" in line and "shared_backbone" in line


def test_a_sweep_with_evaluation_optimises_the_evaluation(tmp_path):
    proc = run_cli("sweep", "ppo", *TINY, "--total-timesteps", "2048", "--seeds", "0-1", "--eval-freq", "1024",
                   "--eval-episodes", "2", "--log-dir", tmp_path, "--name", "ev", cwd=tmp_path, timeout=600)
    assert_ok(proc)
    results = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert results["metric"] == "eval/mean_reward"
    for row in results["trials"]:
        logged = [r["eval/mean_reward"] for r in metrics(row["run_dir"]) if "eval/mean_reward" in r]
        assert len(logged) == 2 and row["final eval/mean_reward"] == pytest.approx(logged[-1])


def test_optuna_with_asha(tmp_path):
    (tmp_path / "space.yaml").write_text("learning_rate: {loguniform: [0.0003, 0.01]}\nnum_steps: {choice: [8, 16]}\n")
    proc = run_cli("sweep", "ppo", *TINY, "--total-timesteps", "2048", "--seeds", "0-1", "--space", "space.yaml",
                   "--search", "optuna", "--num-samples", "2", "--scheduler", "asha", "--log-dir", tmp_path,
                   "--name", "opt", cwd=tmp_path, timeout=600)
    assert_ok(proc)
    table = trials(tmp_path / "opt")
    assert len(table) == 4
    assert sorted(entry["seed"] for entry in table.values()) == [0, 0, 1, 1]  # every suggestion on every seed
    for entry in table.values():
        assert 0.0003 <= entry["values"]["learning_rate"] <= 0.01 and entry["values"]["num_steps"] in (8, 16)
        assert entry["status"] == "TERMINATED" and entry["steps"] >= 1024  # ASHA may stop one at its first rung
    suggestions = {json.dumps(e["values"], sort_keys=True) for e in table.values()}
    assert len(suggestions) == 2
    assert_ok(run_without_ray(tmp_path, "sweep", "--resume", tmp_path / "opt"))  # all told to Optuna: no Ray


def test_resume_of_a_trial_whose_run_ended_unrecorded(grid_sweep, tmp_path):
    """The driver killed after a trial's run wrote its last checkpoint but before Tune recorded the
    trial as finished: --resume reports the run's own final values, and trains nothing again."""
    sweep_dir = tmp_path / "grid"
    shutil.copytree(grid_sweep, sweep_dir, ignore=shutil.ignore_patterns("ray"))
    table = trials(sweep_dir)
    key = sorted(table)[1]
    table[key].update(status="RUNNING", last=-1.0, steps=1024)
    for entry in table.values():  # the copy's runs, not the fixture's
        entry["run_dir"] = str(sweep_dir / "runs" / Path(entry["run_dir"]).name)
    (sweep_dir / "trials.json").write_text(json.dumps(table))
    run_dir = sweep_dir / "runs" / key
    before = (run_dir / "metrics.jsonl").read_bytes()
    proc = run_cli("sweep", "--resume", sweep_dir, cwd=tmp_path, timeout=600)
    assert_ok(proc)
    assert "4 trials finished of 4" in proc.stderr
    assert (run_dir / "metrics.jsonl").read_bytes() == before
    entry = trials(sweep_dir)[key]
    assert entry["status"] == "TERMINATED" and entry["steps"] == 2048
    logged = [r["rollout/ep_rew_mean"] for r in metrics(run_dir) if "rollout/ep_rew_mean" in r]
    row = next(r for r in csv.DictReader((sweep_dir / "results.csv").open()) if Path(r["run_dir"]).name == key)
    assert float(row["final rollout/ep_rew_mean"]) == pytest.approx(logged[-1]) and int(row["steps"]) == 2048


@pytest.mark.skipif(shutil.which("ray") is None and not (Path(sys.executable).parent / "ray").exists(),
                    reason="the ray command is not installed")
def test_sweep_joins_a_running_ray_cluster(tmp_path, monkeypatch):
    ray_exe = str(Path(sys.executable).parent / "ray") if (Path(sys.executable).parent / "ray").exists() else "ray"
    port = 6390 + os.getpid() % 500
    # A throwaway cluster on this machine only: no token to hand around (`ray start` would write one to
    # ~/.ray, shared with any other cluster of this user).
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    # A temp dir of its own: the head writes its address to TEMP_DIR/ray_current_cluster, and stopped by a
    # signal it does not remove it; left in /tmp/ray, a plain ray.init() on this machine would try to
    # join the dead cluster. Short, under /tmp: Ray's socket paths must fit in 107 characters.
    temp_dir = tempfile.mkdtemp(prefix="rlray-", dir="/tmp")
    # `ray start --block` in a session of its own, stopped by signalling that session: `ray stop`
    # would stop every Ray cluster on the machine, a user's own experiments included.
    head = subprocess.Popen([ray_exe, "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(port),
                             "--num-cpus", "2", "--include-dashboard", "false", "--disable-usage-stats",
                             "--temp-dir", temp_dir],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    address_file = Path("/tmp/ray/ray_current_cluster")
    address_before = address_file.read_bytes() if address_file.exists() else None
    try:
        deadline = time.monotonic() + 180
        while not _accepts_connections(port):
            assert head.poll() is None, f"ray start exited with {head.returncode}: {head.stderr.read()[-2000:]}"
            assert time.monotonic() < deadline, "the Ray head did not open its port within 180 s"
            time.sleep(0.5)
        proc = run_cli("sweep", "ppo", *TINY, "--total-timesteps", "1024", "--seeds", "0-1", "--address",
                       f"127.0.0.1:{port}", "--log-dir", tmp_path, "--name", "cluster", cwd=tmp_path, timeout=600)
        assert_ok(proc)
        table = trials(tmp_path / "cluster")
        assert len(table) == 2 and {e["status"] for e in table.values()} == {"TERMINATED"}
        assert (Path(temp_dir) / "ray_current_cluster").exists()
    finally:
        _stop_session(head)
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert (address_file.read_bytes() if address_file.exists() else None) == address_before


def _accepts_connections(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _stop_session(head: subprocess.Popen) -> None:
    """SIGTERM to the head's session (ray start and the processes it started), SIGKILL after 30 s."""

    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(head.pid, sig)
        except ProcessLookupError:
            return
        try:
            head.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        if sig == signal.SIGTERM:  # ray start is gone; make sure nothing of its session is left
            try:
                os.killpg(head.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return
