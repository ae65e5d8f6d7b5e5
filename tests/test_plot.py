"""`rlbase plot`: hand-made run directories with known curves, the figure checked against
hand-computed means, the image file read back, and the user's mistakes as one-line UsageErrors."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from rlbase import plot
from rlbase.errors import UsageError
from rlbase.runs import find_runs

# (learning_rate, seed) -> [(global_step, rollout/ep_rew_mean)]. Seed 2 of the first group logs at
# other steps and runs longer, so the common grid is the union of steps where all three have data.
CURVES = {
    (0.001, 0): [(100, 10.0), (200, 20.0), (300, 30.0)],
    (0.001, 1): [(100, 12.0), (200, 22.0), (300, 32.0)],
    (0.001, 2): [(100, 14.0), (150, 20.0), (300, 50.0), (400, 60.0)],
    (0.01, 0): [(100, 1.0), (200, 2.0), (300, 3.0)],
    (0.01, 1): [(100, 2.0), (200, 3.0), (300, 4.0)],
    (0.01, 2): [(100, 3.0), (200, 4.0), (300, 5.0)],
}
# Grid [100, 150, 200, 300]; at 150 seeds 0 and 1 are interpolated (15, 17), at 200 seed 2 is (30).
MEAN_SLOW = [12.0, (15 + 17 + 20) / 3, (20 + 22 + 30) / 3, (30 + 32 + 50) / 3]
MEAN_FAST = [2.0, 3.0, 4.0]


def seconds(step: int) -> float:
    return 1000.0 + step / 50  # 2 s per 100 steps; the first record (step 100) is t = 0


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    for (lr, seed), points in CURVES.items():
        run = root / f"ppo_lr{lr}_s{seed}"
        run.mkdir(parents=True)
        config = {"env_id": "CartPole-v1", "learning_rate": lr, "seed": seed, "total_timesteps": 400}
        (run / "config.json").write_text(json.dumps({"algo": "ppo", "config": config}))
        lines = []
        for step, value in points:
            record = {"global_step": step, "time": seconds(step), "rollout/ep_rew_mean": value}
            if lr == 0.01:
                record["eval/mean_reward"] = value * 10  # only the second group evaluates
            lines.append(json.dumps(record))
        lines.append('{"global_step": 999, "rollout/ep_rew')  # a line cut short by a crash: skipped
        (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return root


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="rlbase plot")
    plot.add_arguments(parser)
    return parser.parse_args(list(argv))


def legend_texts(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def mean_line(ax, label_part: str):
    (line,) = [line for line in ax.get_lines() if label_part in line.get_label()]
    return line


def test_png_written_with_its_size_and_summary(runs_dir, tmp_path, capsys):
    out = tmp_path / "figs" / "curves.png"
    assert plot.run(parse(str(runs_dir), "--out", str(out), "--width", "5", "--height", "3", "--dpi", "100")) == 0
    image = imread(out)
    assert image.shape[:2] == (300, 500)  # height*dpi x width*dpi
    assert sorted(p.name for p in out.parent.iterdir()) == ["curves.png"]  # no temporary file left
    line = capsys.readouterr().out.strip()
    assert "\n" not in line and str(out) in line
    assert "rollout/ep_rew_mean" in line and "2 groups" in line and "6 runs" in line


def test_default_size_and_dpi(runs_dir, tmp_path):
    out = tmp_path / "curves.png"
    plot.run(parse(str(runs_dir), "--out", str(out)))
    assert imread(out).shape[:2] == (round(plot.PANEL_SIZE[1] * plot.DPI), round(plot.PANEL_SIZE[0] * plot.DPI))


def test_axes_legend_and_means(runs_dir):
    fig = plot.draw(find_runs([runs_dir]))
    (ax,) = fig.axes
    assert ax.get_xlabel() == "environment steps"
    assert ax.get_ylabel() == "rollout/ep_rew_mean"
    assert ax.get_title() == "CartPole-v1: rollout/ep_rew_mean"
    texts = legend_texts(ax)
    assert len(texts) == 2
    # Only the field that differs between the groups is shown (not algo or env id).
    assert texts == ["learning_rate=0.001 (3 seeds)", "learning_rate=0.01 (3 seeds)"]
    slow, fast = mean_line(ax, "0.001"), mean_line(ax, "0.01 ")
    np.testing.assert_allclose(slow.get_xdata(), [100, 150, 200, 300])  # not 400: seeds 0 and 1 end at 300
    np.testing.assert_allclose(slow.get_ydata(), MEAN_SLOW)
    np.testing.assert_allclose(fast.get_xdata(), [100, 200, 300])
    np.testing.assert_allclose(fast.get_ydata(), MEAN_FAST)
    assert len(ax.get_lines()) == 2  # no per-seed lines without --seeds
    assert len(ax.collections) == 2  # one confidence band per group


def test_bootstrap_band_brackets_the_mean_within_the_seed_range(runs_dir):
    series = plot.aggregate(find_runs([runs_dir / "ppo_lr0.001_s*"]), "rollout/ep_rew_mean", "steps", "g")
    values = np.stack([np.interp(series.grid, x, y) for x, y in series.curves])
    assert np.all(series.low <= series.mean + 1e-9) and np.all(series.mean <= series.high + 1e-9)
    assert np.all(series.low >= values.min(axis=0) - 1e-9) and np.all(series.high <= values.max(axis=0) + 1e-9)
    assert np.all(series.high - series.low > 0)
    again = plot.aggregate(series.runs, "rollout/ep_rew_mean", "steps", "g")
    np.testing.assert_array_equal(again.low, series.low)  # a fixed bootstrap seed: the same picture


def test_one_seed_per_group_has_no_band(runs_dir):
    fig = plot.draw(find_runs([runs_dir]), group_by=["learning_rate", "seed"])
    (ax,) = fig.axes
    assert len(legend_texts(ax)) == 6 and all(t.endswith("(1 seed)") for t in legend_texts(ax))
    assert "seed=2" in legend_texts(ax)[2]
    assert len(ax.collections) == 0


def test_seeds_adds_thin_per_run_lines(runs_dir):
    fig = plot.draw(find_runs([runs_dir]), seeds=True)
    (ax,) = fig.axes
    assert len(ax.get_lines()) == 2 + 6
    assert len(legend_texts(ax)) == 2  # the per-run lines stay out of the legend
    thin = [line for line in ax.get_lines() if line.get_linewidth() < 1]
    assert len(thin) == 6
    assert any(list(line.get_xdata()) == [100, 150, 300, 400] for line in thin)  # a run's own points, all of them


def test_time_axis_uses_seconds_since_start(runs_dir):
    fig = plot.draw(find_runs([runs_dir]), x="time")
    (ax,) = fig.axes
    assert ax.get_xlabel() == "wall-clock (s)"
    fast = mean_line(ax, "0.01 ")
    np.testing.assert_allclose(fast.get_xdata(), [0.0, 2.0, 4.0])
    np.testing.assert_allclose(fast.get_ydata(), MEAN_FAST)


def test_two_tags_make_two_panels(runs_dir):
    fig = plot.draw(find_runs([runs_dir]), ["rollout/ep_rew_mean", "eval/mean_reward"], title="my runs")
    assert [ax.get_ylabel() for ax in fig.axes] == ["rollout/ep_rew_mean", "eval/mean_reward"]
    assert fig.get_suptitle() == "my runs"
    # Only the second group evaluated; it keeps its color (C1) in the eval panel.
    assert legend_texts(fig.axes[1]) == ["learning_rate=0.01 (3 seeds)"]
    (line,) = fig.axes[1].get_lines()
    assert line.get_color() == "C1"
    np.testing.assert_allclose(line.get_ydata(), np.array(MEAN_FAST) * 10)


def test_svg_output(runs_dir, tmp_path):
    out = tmp_path / "curves.svg"
    plot.run(parse(str(runs_dir / "*"), "--out", str(out), "--group-by", "algo,learning_rate"))
    text = out.read_text()
    assert "<svg" in text and "learning_rate=0.001 (3 seeds)" in text


@pytest.mark.parametrize("argv, needle", [
    (["EMPTY", "--out", "x.png"], "holds no rlbase run directory"),
    (["RUNS", "--out", "x.png", "--tag", "loss/nope"], "rollout/ep_rew_mean"),
    (["RUNS", "--out", "x.jpg"], ".png or .svg"),
    (["RUNS", "--out", "x.png", "--group-by", "algo,colour"], "colour"),
    (["RUNS", "--out", "x.png", "--height", "0"], "--height"),
])
def test_mistakes_are_one_line_usage_errors(runs_dir, tmp_path, argv, needle):
    (tmp_path / "empty").mkdir()
    names = {"EMPTY": str(tmp_path / "empty"), "RUNS": str(runs_dir)}
    argv = [names.get(a, a) for a in argv]
    argv[argv.index("--out") + 1] = str(tmp_path / argv[argv.index("--out") + 1])
    with pytest.raises(UsageError) as caught:
        plot.run(parse(*argv))
    message = str(caught.value)
    assert "\n" not in message and needle in message
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "x.jpg").exists()


def test_unknown_tag_names_the_tags_that_exist(runs_dir):
    expected = r"no run logged loss/nope; tags logged: eval/mean_reward, rollout/ep_rew_mean$"
    with pytest.raises(UsageError, match=expected):
        plot.draw(find_runs([runs_dir]), ["loss/nope"])


def test_in_a_fresh_interpreter_without_display(runs_dir, tmp_path):
    """As the CLI will call it: parser built by add_arguments, no DISPLAY, pyplot never imported."""
    out = tmp_path / "sub.png"
    code = ("import argparse, sys; from rlbase import plot; p = argparse.ArgumentParser(); plot.add_arguments(p); "
            "code = plot.run(p.parse_args(sys.argv[1:])); "
            "assert 'matplotlib.pyplot' not in sys.modules; sys.exit(code)")
    proc = subprocess.run([sys.executable, "-c", code, str(runs_dir), "--out", str(out), "--seeds"],
                          capture_output=True, text=True, timeout=120, check=False,
                          env={k: v for k, v in os.environ.items() if k not in ("DISPLAY", "MPLBACKEND")})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"rlbase: wrote {out}")
    assert imread(out).ndim == 3
