"""`rlbase report`: per-group final/best mean and IQM against values worked out by hand from fixed
run directories, the bootstrap intervals against a plain numpy percentile bootstrap, degenerate
groups, missing metrics, and the table / strict-JSON output and one-line usage errors."""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from rlbase.errors import UsageError
from rlbase.report import add_arguments, bootstrap_ci, iqm, run, summarize_groups
from rlbase.runs import find_runs

METRIC = "rollout/ep_rew_mean"

# Group A: learning_rate=0.001, 8 seeds. Sorted finals 1 2 3 5 6 7 8 40: mean 72/8 = 9.0,
# IQM (25% cut from each end = 2 values) = (3+5+6+7)/4 = 5.25. Sorted peaks 9 10 11 12 14 15 20 50:
# mean 141/8 = 17.625, IQM (11+12+14+15)/4 = 13.0.
FINALS_A = [5, 1, 8, 3, 7, 2, 6, 40]
PEAKS_A = [12, 9, 20, 11, 15, 10, 14, 50]
SUCCESS_A = [1, 0, 1, 1, 0, 1, 1, 1]  # last eval/success per run: mean 0.75
# Group B: learning_rate=0.01, 5 seeds. Sorted finals 80 90 100 110 130: mean 102, IQM (scipy cuts
# int(0.25*5) = 1 from each end) = (90+100+110)/3 = 100. Sorted peaks 95 120 130 150 200: mean 139,
# IQM (120+130+150)/3.
FINALS_B = [100, 90, 130, 80, 110]
PEAKS_B = [150, 95, 130, 120, 200]


def write_run(path: Path, seed: int, learning_rate: float, records: list[dict]) -> Path:
    path.mkdir(parents=True)
    config = {"env_id": "CartPole-v1", "seed": seed, "learning_rate": learning_rate, "total_timesteps": 5000}
    (path / "config.json").write_text(json.dumps({"algo": "ppo", "config": config}))
    # json.dumps writes float('nan') as NaN, as a crashed logger might: the reader must skip it.
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def make_runs(root: Path) -> Path:
    for i, (final, peak, success) in enumerate(zip(FINALS_A, PEAKS_A, SUCCESS_A)):
        # Steps end at 2000 + 100 i (mean 2350, min 2000); wall-clock 20 + i seconds (mean 23.5).
        write_run(root / "a" / f"seed{i}", i, 0.001, [
            {"global_step": 0, "time": 100.0, METRIC: 0.0},
            {"global_step": 1000, "time": 110.0, METRIC: peak, "eval/success": 1 - success},
            {"global_step": 2000 + 100 * i, "time": 120.0 + i, METRIC: final, "eval/success": success},
        ])
    for i, (final, peak) in enumerate(zip(FINALS_B, PEAKS_B)):
        write_run(root / "b" / f"seed{i}", i, 0.01, [
            {"global_step": 0, "time": 0.0, METRIC: -5.0},
            {"global_step": 1000, "time": 5.0, METRIC: peak},
            {"global_step": 2000, "time": 10.0, METRIC: final},
            {"global_step": 3000, "time": 15.0, METRIC: float("nan")},  # not finite: final stays `final`
            {"global_step": 4000, "time": 20.0, "train/loss": 0.5},     # no metric in the last record
        ])
    return root


def by_label(groups: list[dict]) -> dict[str, dict]:
    return {group["label"]: group for group in groups}


def report_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="rlbase report")
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_final_best_mean_iqm_against_hand_computed_values(tmp_path):
    runs = find_runs([make_runs(tmp_path)])
    groups = by_label(summarize_groups(runs, METRIC, resamples=2000))
    assert set(groups) == {"learning_rate=0.001", "learning_rate=0.01"}
    a, b = groups["learning_rate=0.001"], groups["learning_rate=0.01"]

    assert a["n_runs"] == 8 and sorted(a["seeds"]) == list(range(8)) and a["missing"] == []
    assert a["final"]["mean"] == pytest.approx(9.0)
    assert a["final"]["iqm"] == pytest.approx(5.25)
    assert a["best"]["mean"] == pytest.approx(17.625)
    assert a["best"]["iqm"] == pytest.approx(13.0)
    assert a["success"] == pytest.approx(0.75) and a["n_success"] == 8
    assert a["steps"] == {"mean": pytest.approx(2350.0), "min": 2000}
    assert a["wall_clock"]["mean"] == pytest.approx(23.5)

    assert b["n_runs"] == 5 and b["key"] == {"algo": "ppo", "env_id": "CartPole-v1", "learning_rate": "0.01"}
    assert sorted(b["final"]["values"]) == [80, 90, 100, 110, 130]  # the NaN record is not a final value
    assert b["final"]["mean"] == pytest.approx(102.0)
    assert b["final"]["iqm"] == pytest.approx(100.0)
    assert b["best"]["mean"] == pytest.approx(139.0)
    assert b["best"]["iqm"] == pytest.approx((120 + 130 + 150) / 3)
    assert b["success"] is None and b["n_success"] == 0
    assert b["steps"] == {"mean": pytest.approx(4000.0), "min": 4000}
    assert b["wall_clock"]["mean"] == pytest.approx(20.0)

    for group in (a, b):
        for part in ("final", "best"):
            values = group[part]["values"]
            for name in ("mean", "iqm"):
                low, high = group[part][f"{name}_ci"]
                assert min(values) <= low <= group[part][name] <= high <= max(values)


def numpy_percentile_bootstrap(values, statistic, confidence, resamples, seed):
    """The textbook percentile bootstrap: resample with replacement, take the statistic's quantiles."""
    data = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    samples = data[rng.integers(0, len(data), size=(resamples, len(data)))]
    alpha = (1 - confidence) / 2
    return np.quantile(statistic(samples, axis=1), [alpha, 1 - alpha])


@pytest.mark.parametrize("values", [FINALS_A, PEAKS_B, list(np.random.default_rng(3).normal(10, 2, size=12))])
@pytest.mark.parametrize("statistic", [np.mean, iqm], ids=["mean", "iqm"])
def test_bootstrap_ci_agrees_with_a_plain_numpy_bootstrap(values, statistic):
    ours = bootstrap_ci(values, statistic, confidence=0.95, resamples=10000, seed=0)
    reference = numpy_percentile_bootstrap(values, statistic, 0.95, 10000, seed=12345)
    spread = max(values) - min(values)
    # Different random streams: Monte Carlo error only (the IQM's bootstrap distribution is lumpy).
    assert ours == pytest.approx(reference, abs=0.04 * spread)
    estimate = statistic(np.asarray(values, dtype=float), axis=-1)
    assert min(values) <= ours[0] <= estimate <= ours[1] <= max(values)


def test_bootstrap_ci_is_reproducible_and_narrows_with_more_runs():
    values = np.random.default_rng(0).normal(0.0, 1.0, size=64)
    first = bootstrap_ci(values[:8], iqm, 0.95, 2000, seed=7)
    assert bootstrap_ci(values[:8], iqm, 0.95, 2000, seed=7) == first
    assert bootstrap_ci(values[:8], iqm, 0.95, 2000, seed=8) != first
    for statistic in (np.mean, iqm):
        few = bootstrap_ci(values[:8], statistic, 0.95, 2000, seed=0)
        many = bootstrap_ci(values, statistic, 0.95, 2000, seed=0)
        assert many[1] - many[0] < few[1] - few[0]
    narrow = bootstrap_ci(values, np.mean, 0.5, 2000, seed=0)
    wide = bootstrap_ci(values, np.mean, 0.99, 2000, seed=0)
    assert wide[0] < narrow[0] < narrow[1] < wide[1]


def test_summaries_are_reproducible_for_a_seed(tmp_path):
    runs = find_runs([make_runs(tmp_path)])
    assert summarize_groups(runs, METRIC, resamples=500, seed=3) == summarize_groups(runs, METRIC, resamples=500, seed=3)


@pytest.mark.parametrize("values", [[4.0], [4.0, 4.0, 4.0], [1.0, 2.0], [1.0, 5.0, 2.0]])
def test_degenerate_small_groups_give_finite_intervals_without_warnings(values):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for statistic in (np.mean, iqm):
            low, high = bootstrap_ci(values, statistic, 0.95, 1000, seed=0)
            assert np.isfinite([low, high]).all()
            assert min(values) <= low <= high <= max(values)
            if len(set(values)) == 1:
                assert low == high == values[0]


def test_single_run_group(tmp_path):
    write_run(tmp_path / "only", 0, 0.001, [{"global_step": 10, "time": 1.0, METRIC: 3.0},
                                            {"global_step": 20, "time": 4.0, METRIC: 2.0}])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        [group] = summarize_groups(find_runs([tmp_path]), METRIC)
    assert group["label"] == "ppo CartPole-v1" and group["n_runs"] == 1
    assert group["final"] == {"values": [2.0], "mean": 2.0, "iqm": 2.0, "mean_ci": [2.0, 2.0], "iqm_ci": [2.0, 2.0]}
    assert group["best"]["mean"] == 3.0 and group["best"]["iqm_ci"] == [3.0, 3.0]
    assert group["steps"] == {"mean": 20.0, "min": 20} and group["wall_clock"]["mean"] == 3.0


def test_runs_without_the_metric_are_counted_as_missing(tmp_path):
    root = make_runs(tmp_path / "runs")
    empty = write_run(root / "a" / "seed8", 8, 0.001, [])  # crashed before its first log line
    write_run(root / "c" / "seed0", 0, 0.1, [{"global_step": 500, "time": 1.0, "train/loss": 1.0}])
    groups = by_label(summarize_groups(find_runs([root]), METRIC, resamples=500))
    a = groups["learning_rate=0.001"]
    assert a["n_runs"] == 9 and a["missing"] == [str(empty.resolve())]
    assert a["final"]["mean"] == pytest.approx(9.0) and a["final"]["iqm"] == pytest.approx(5.25)
    assert a["steps"]["mean"] == pytest.approx(2350.0)  # the empty run has no step to average
    c = groups["learning_rate=0.1"]
    assert c["n_runs"] == 1 and len(c["missing"]) == 1
    assert c["final"]["mean"] is None and c["best"]["iqm_ci"] == [None, None]
    assert c["steps"] == {"mean": 500.0, "min": 500}


def test_markdown_table_has_a_header_and_one_row_per_group(tmp_path, capsys):
    root = make_runs(tmp_path / "runs")
    write_run(root / "c" / "seed0", 0, 0.1, [])
    assert run(report_args(str(root), "--resamples", "500")) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("|")]
    assert rows[0].split("|")[1:-1] == [" group ", " runs ", " final mean ", " final IQM [95% CI] ",
                                        " best mean ", " best IQM [95% CI] ", " success ", " steps ",
                                        " wall-clock "]
    assert set(rows[1].replace("|", "")) <= set("-: ")
    body = rows[2:]
    assert len(body) == 3
    assert [row.split("|")[1].strip() for row in body] == ["learning_rate=0.001", "learning_rate=0.01",
                                                            "learning_rate=0.1"]
    first = [cell.strip() for cell in body[0].split("|")[1:-1]]
    assert first[1] == "8" and first[2] == "9" and first[3].startswith("5.25 [")
    assert first[6] == "75%" and first[7] == "2.35k" and first[8] == "23.5s"
    assert "1 (1 missing)" in body[2] and "nan" not in out.lower()


def test_json_output_is_strict_and_matches_the_summary(tmp_path, capsys):
    root = make_runs(tmp_path / "runs")
    write_run(root / "c" / "seed0", 0, 0.1, [])

    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    assert run(report_args(str(root / "*"), "--json", "--resamples", "500", "--bootstrap-seed", "4")) == 0
    payload = json.loads(capsys.readouterr().out, parse_constant=refuse)
    assert payload["metric"] == METRIC and len(payload["groups"]) == 3
    expected = summarize_groups(find_runs([root]), METRIC, resamples=500, seed=4)
    assert payload["groups"] == json.loads(json.dumps(expected))
    assert payload["groups"][2]["final"]["mean"] is None


def test_group_by_and_metric_flags(tmp_path, capsys):
    root = make_runs(tmp_path)
    assert run(report_args(str(root), "--json", "--group-by", "algo", "--metric", "eval/success",
                           "--resamples", "200")) == 0
    [group] = json.loads(capsys.readouterr().out)["groups"]
    assert group["label"] == "ppo CartPole-v1" and group["n_runs"] == 13
    assert len(group["missing"]) == 5  # group B never evaluated
    assert group["final"]["mean"] == pytest.approx(0.75)


def test_usage_errors_are_one_line(tmp_path):
    root = make_runs(tmp_path / "runs")
    (tmp_path / "empty").mkdir()
    cases = [
        (report_args(str(tmp_path / "empty")), "no rlbase run"),
        (report_args(str(tmp_path / "nowhere-*")), "no such run directory"),
        (report_args(str(root), "--metric", "eval/mean_reward"), "available tags: eval/success, rollout/ep_rew_mean"),
        (report_args(str(root), "--group-by", "algo,nonsense"), "nonsense"),
        (report_args(str(root), "--group-by", ","), "--group-by"),
    ]
    for args, expected in cases:
        with pytest.raises(UsageError) as error:
            run(args)
        assert expected in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(UsageError):
        summarize_groups([], METRIC)


def test_iqm_is_scipy_trim_mean():
    values = np.random.default_rng(1).normal(size=(3, 10))
    assert np.allclose(iqm(values), stats.trim_mean(values, 0.25, axis=-1))
    assert iqm(np.array([1.0, 2.0, 3.0, 4.0, 100.0, 5.0, 6.0, 7.0])) == pytest.approx(4.5)


def test_threshold_counts_runs_and_the_steps_to_reach_it(tmp_path, capsys):
    """Runs reaching the metric >= threshold, still at or above it at the end, and the median steps and
    seconds to the first point that reached it, against the numbers written here."""
    curves = {0: [(100, 0.0, 1.0), (200, 1.0, 5.0), (300, 2.0, 6.0)],   # reaches 5 at step 200, stays
              1: [(100, 0.0, 5.5), (200, 3.0, 2.0), (300, 6.0, 1.0)],   # reaches at 100, falls back below
              2: [(100, 0.0, 1.0), (200, 1.0, 2.0), (300, 2.0, 3.0)]}   # never
    for seed, curve in curves.items():
        write_run(tmp_path / f"r{seed}", seed, 0.001,
                  [{"global_step": step, "time": 1000.0 + sec, "rollout/ep_rew_mean": value} for step, sec, value in curve])
    from rlbase.runs import find_runs

    runs = find_runs([tmp_path])
    (group,) = summarize_groups(runs, "rollout/ep_rew_mean", threshold=5.0)
    assert group["reached"] == {"threshold": 5.0, "runs": 2, "fraction": 2 / 3, "final_fraction": 1 / 3,
                                "median_steps": 150.0, "median_seconds": 0.5}
    assert "reached" not in summarize_groups(runs, "rollout/ep_rew_mean")[0]
    assert run(report_args(str(tmp_path), "--threshold", "5")) == 0
    table = capsys.readouterr().out
    assert "reached >= 5" in table and "| 2/3 | 1/3 |" in table


def test_pretraining_runs_report_and_plot_their_held_out_accuracy(tmp_path, capsys):
    """`rlbase pretrain` folders (a flat config.json with task and backbone) are runs to report and
    plot: grouped by task, their held-out val/accuracy by default, against training samples seen."""
    from rlbase.cli import main
    from rlbase.plot import draw
    from rlbase.pretrain import PretrainConfig, pretrain

    for seed in (0, 1):
        pretrain(PretrainConfig(task="maze-exit-direction", backbone="mlp", hidden_sizes=(32,),
                                env_kwargs={"size": 7, "obs_mode": "grid"}, train_samples=256, val_samples=128,
                                epochs=2, batch_size=64, seed=seed, out=str(tmp_path / f"exit{seed}"),
                                device="cpu"), progress=False)
    capsys.readouterr()
    assert main(["report", str(tmp_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["metric"] == "val/accuracy"
    (group,) = report["groups"]
    assert group["n_runs"] == 2 and group["key"] == {"algo": "pretrain", "env_id": "maze-exit-direction"}
    finals = [json.loads((tmp_path / f"exit{s}" / "metrics.jsonl").read_text().splitlines()[-1])["val/accuracy"]
              for s in (0, 1)]
    assert group["final"]["mean"] == pytest.approx(sum(finals) / 2)
    fig = draw(find_runs([tmp_path]))
    assert fig.axes[0].get_xlabel() == "training samples seen" and fig.axes[0].get_ylabel() == "val/accuracy"


def test_a_sweeps_runs_group_by_case_name(tmp_path, capsys):
    """A sweep's arms are named by its space's cases: its runs group by case name, not by the values
    (such as long backbone paths) the cases set; a field that also varies within a case still splits
    it; `--group-by case` names them; a hand-edited trials.json is read entry by entry."""
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "sweep.json").write_text("{}")
    trials = {}
    weights = "/long/path/pretrained"
    arms = [("frozen", 0.001, weights), ("frozen", 0.001, weights), ("scratch", 0.001, ""), ("scratch", 0.01, ""),
            ("scratch", 0.01, "")]
    for i, (case, lr, weights) in enumerate(arms):
        run_dir = write_run(sweep / "runs" / f"t{i:04d}", i, lr, [{"global_step": 100, METRIC: float(i)}])
        config = json.loads((run_dir / "config.json").read_text())
        config["config"]["backbone_weights"] = weights
        (run_dir / "config.json").write_text(json.dumps(config))
        trials[f"t{i:04d}"] = {"case": case, "seed": i}
    (sweep / "trials.json").write_text(json.dumps(trials))
    labels = {g["label"]: g["n_runs"] for g in summarize_groups(find_runs([sweep]), METRIC, resamples=50)}
    assert labels == {"case=frozen, learning_rate=0.001": 2, "case=scratch, learning_rate=0.001": 1,
                      "case=scratch, learning_rate=0.01": 2}
    # The sweep's run dirs named one by one (a glob) are still its trials.
    assert run(report_args(str(sweep / "runs" / "t*"), "--json", "--group-by", "case", "--resamples", "50")) == 0
    assert {g["label"]: g["n_runs"] for g in json.loads(capsys.readouterr().out)["groups"]} == \
        {"case=frozen": 2, "case=scratch": 3}
    # Entries that are not a trial's are skipped: those runs have no case, and group by their values.
    trials["t0000"] = {"case": ["not", "a", "name"]}
    trials["t0001"] = "junk"
    (sweep / "trials.json").write_text(json.dumps(trials))
    runs = find_runs([sweep])
    assert [r.case for r in runs] == [None, None, "scratch", "scratch", "scratch"]
    labels = {g["label"]: g["n_runs"] for g in summarize_groups(runs, METRIC, resamples=50)}
    assert labels == {"case=-, learning_rate=0.001": 2, "case=scratch, learning_rate=0.001": 1,
                      "case=scratch, learning_rate=0.01": 2}
    (sweep / "trials.json").write_text("[1, 2")  # not JSON: no cases at all
    assert {r.case for r in find_runs([sweep])} == {None}
