"""rlbase.logger: event files read back by TensorBoard, strict-JSON metrics, lazy TensorBoard import,
and the progress display (plain status lines off a terminal, one clean bar on one, checked in tmux)."""

from __future__ import annotations

import io
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from rlbase.logger import Progress, RunLogger

REPO = Path(__file__).resolve().parents[1]
DRIVER = Path(__file__).with_name("progress_driver.py")


def load_events(run_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return acc


def strict_json(line: str) -> dict:
    def reject(name: str):
        raise ValueError(f"non-standard JSON constant {name} in {line!r}")

    return json.loads(line, parse_constant=reject)


# ---------------------------------------------------------------- files


def test_event_file_read_back_by_tensorboard(tmp_path):
    from tensorboard.plugins.hparams import plugin_data_pb2

    hparams = {"learning_rate": 0.001, "env_id": "CartPole-v1", "hidden_sizes": (64, 64), "double_q": True}
    logger = RunLogger(tmp_path, 1000, hparams=hparams, progress=False)
    logger.log(100, {"rollout/ep_rew_mean": 10.0, "train/loss": 0.5})
    logger.log(200, {"rollout/ep_rew_mean": 20.0, "train/loss": 0.25})
    logger.log(200, {"eval/mean_return": 42.0}, fps=False)
    logger.close()

    acc = load_events(tmp_path)
    scalars = set(acc.Tags()["scalars"])
    assert {"rollout/ep_rew_mean", "train/loss", "time/fps", "eval/mean_return"} <= scalars
    assert [(e.step, e.value) for e in acc.Scalars("rollout/ep_rew_mean")] == [(100, 10.0), (200, 20.0)]
    assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [(100, 0.5), (200, 0.25)]
    assert [(e.step, e.value) for e in acc.Scalars("eval/mean_return")] == [(200, 42.0)]
    assert [e.step for e in acc.Scalars("time/fps")] == [100, 200]  # none for the fps=False log
    assert all(e.value > 0 for e in acc.Scalars("time/fps"))

    text_tags = [t for t in acc.Tags()["tensors"] if t.startswith("hyperparameters")]
    assert len(text_tags) == 1
    text = acc.Tensors(text_tags[0])[0].tensor_proto.string_val[0].decode()
    for row in ("|learning_rate|0.001|", "|env_id|CartPole-v1|", "|hidden_sizes|(64, 64)|", "|double_q|True|"):
        assert row in text

    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    values = start.session_start_info.hparams
    assert values["learning_rate"].number_value == 0.001
    assert values["env_id"].string_value == "CartPole-v1"
    assert values["hidden_sizes"].string_value == "(64, 64)"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert [m.name.tag for m in experiment.metric_infos] == ["rollout/ep_rew_mean"]


def test_hparams_written_by_a_run_that_never_logged(tmp_path):
    quiet = tmp_path / "no_hparams"
    RunLogger(quiet, 100, progress=False).close()
    assert not list(quiet.glob("events.out.tfevents.*"))  # nothing to write: no writer was made

    run_dir = tmp_path / "hparams"
    logger = RunLogger(run_dir, 100, hparams={"seed": 3}, progress=False)
    logger.flush()
    logger.close()
    logger.close()  # idempotent
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1
    acc = load_events(run_dir)
    text = acc.Tensors("hyperparameters/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "|seed|3|" in text
    assert (run_dir / "metrics.jsonl").read_text() == ""


def test_metrics_jsonl_is_strict_json_with_non_finite_values(tmp_path):
    logger = RunLogger(tmp_path, 1000, progress=False)
    logger.log(10, {"a/nan": float("nan"), "a/inf": float("inf"), "a/neg_inf": float("-inf"),
                    "a/np_nan": np.float32("nan"), "a/finite": 1.5, "a/int": 7})
    logger.log(20, {"a/finite": 2.5}, fps=False)
    # Line-buffered: both lines are on disk while the logger is still open.
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    logger.close()

    assert len(lines) == 2
    first, second = (strict_json(line) for line in lines)
    assert first["global_step"] == 10 and second["global_step"] == 20
    assert abs(first["time"] - time.time()) < 600
    assert first["a/nan"] is None and first["a/inf"] is None and first["a/neg_inf"] is None
    assert first["a/np_nan"] is None
    assert first["a/finite"] == 1.5 and first["a/int"] == 7 and isinstance(first["a/int"], int)
    assert first["time/fps"] > 0
    assert "time/fps" not in second and second["a/finite"] == 2.5

    acc = load_events(tmp_path)  # TensorBoard gets the real values
    assert math.isnan(acc.Scalars("a/nan")[0].value)
    assert acc.Scalars("a/inf")[0].value == math.inf
    assert acc.Scalars("a/neg_inf")[0].value == -math.inf


def test_logger_does_not_import_tensorboard_until_it_writes(tmp_path):
    code = textwrap.dedent(f"""
        import sys
        from rlbase.logger import RunLogger

        def loaded():
            return sorted(m for m in sys.modules if m.split(".")[0] == "tensorboard"
                          or m.startswith("torch.utils.tensorboard"))

        assert not loaded(), loaded()
        logger = RunLogger({str(tmp_path)!r}, 1000, hparams={{"lr": 0.1}}, progress=False)
        logger.start_progress()
        for step in range(0, 1000, 10):
            logger.progress(step)
        logger.message("rlbase: a message")
        assert not loaded(), loaded()
        logger.log(1000, {{"train/loss": 1.0}})
        assert "torch.utils.tensorboard" in loaded(), loaded()  # the check does see the import
        logger.close()
        print("checked")
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "checked"
    assert proc.stderr.strip() == "rlbase: a message"


# ---------------------------------------------------------------- display off a terminal

STATUS = re.compile(r"rlbase: (?P<n>[\d,]+)/2,000 steps \((?P<pct>\d+)%\), (?P<rate>[\d,.]+) steps/s"
                    r"(?:, return (?P<ret>[-\d.]+))?, ETA (?P<eta>\d+s|\d+m\d\ds|\d+h\d\dm|\?)")


def test_status_lines_when_stderr_is_not_a_terminal(tmp_path, capsys):
    interval = 0.2
    logger = RunLogger(tmp_path, 2000, progress=None, status_interval=interval)
    for step in (20, 40):  # before start_progress: nothing shown, however long it takes
        logger.progress(step)
        time.sleep(interval * 1.5)
    logger.log(40, {"train/loss": 1.0})
    assert capsys.readouterr().err == ""

    logger.start_progress()
    start = time.monotonic()
    step = 40
    for i in range(90):
        time.sleep(0.015)
        step += 20
        if i == 30:  # log() moves the display too: a line at this step already has the return
            logger.log(step, {"rollout/ep_rew_mean": 123.4})
            logged_at = step
        logger.progress(step)
    elapsed = time.monotonic() - start
    logger.close()

    lines = capsys.readouterr().err.splitlines()
    assert 3 <= len(lines) <= elapsed / interval + 1, lines
    matches = [STATUS.fullmatch(line) for line in lines]
    assert all(matches), lines
    steps = [int(m["n"].replace(",", "")) for m in matches]
    assert steps == sorted(set(steps)) and 40 < steps[0] and steps[-1] <= 2000
    for m, n in zip(matches, steps):
        assert int(m["pct"]) == 100 * n // 2000
        assert float(m["rate"].replace(",", "")) > 0
        assert m["eta"] != "?"
        assert m["ret"] == ("123.4" if n >= logged_at else None)
    assert any(m["ret"] for m in matches) and not all(m["ret"] for m in matches)


def test_no_display_when_progress_is_false(tmp_path, capsys):
    logger = RunLogger(tmp_path, 100, progress=False, status_interval=0.05)
    logger.start_progress()
    for step in range(0, 100, 10):
        logger.progress(step)
        logger.log(step, {"rollout/ep_rew_mean": 1.0})
        time.sleep(0.02)
    logger.message("rlbase: still printed")
    logger.close()
    assert capsys.readouterr().err == "rlbase: still printed\n"


def test_episode_progress_lines_and_context_manager():
    out = io.StringIO()
    with Progress(6, desc="eval", status_interval=0.05, file=out) as progress:
        assert progress.mode == "lines"  # a StringIO is not a terminal
        for _ in range(6):
            time.sleep(0.07)
            progress.update(1, return_=200.0)
    lines = out.getvalue().splitlines()
    assert lines, "no status line"
    pattern = re.compile(r"rlbase: eval: (\d)/6 episodes \((\d+)%\), [\d.]+ episodes/s, return 200\.0, ETA \d+s")
    for line in lines:
        m = pattern.fullmatch(line)
        assert m, line
        assert int(m[2]) == 100 * int(m[1]) // 6

    silent = io.StringIO()
    with Progress(3, enabled=False, status_interval=0.0, file=silent) as progress:
        for _ in range(3):
            time.sleep(0.01)
            progress.update()
    assert silent.getvalue() == ""


def test_bar_shows_one_rate_the_return_and_the_eta():
    out = io.StringIO()
    progress = Progress(45_056, unit="step", enabled=True, file=out)
    assert progress.mode == "bar"
    for _ in range(20):
        time.sleep(0.01)
        progress.update(1024, return_=5.0)
    progress.close()
    text = out.getvalue()
    assert text.endswith("\n")  # closed: the cursor is on a fresh line
    last = [part for part in text.split("\r") if part.strip()][-1].strip()
    assert re.fullmatch(r"\d+%\|.*\| [\d.]+k/45\.1k steps \[[\d,.]+ steps/s, return 5\.0, ETA \d+s\]", last), last
    assert last.count("/s") == 1 and "it/s" not in last and "s/it" not in last


def test_overshoot_past_the_total_shows_100_percent():
    """Training stops at the first vector step at or past total_timesteps: that is 100%, not 0%/?."""
    bar_out, lines_out = io.StringIO(), io.StringIO()
    with Progress(1000, unit="step", enabled=True, file=bar_out) as bar, \
            Progress(1000, unit="step", status_interval=0.0, file=lines_out) as lines:
        for progress in (bar, lines):
            progress.update(996)
            time.sleep(0.01)
            progress.update(8)
    last = [part for part in bar_out.getvalue().split("\r") if part.strip()][-1].strip()
    assert last.startswith("100%|") and "| 1000/1000 steps [" in last, last
    assert lines_out.getvalue().splitlines()[-1].startswith("rlbase: 1,004/1,000 steps (100%), "), lines_out.getvalue()


# ---------------------------------------------------------------- the bar on a real terminal (tmux)


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_bar_under_tmux(tmp_path):
    sys.path.insert(0, str(DRIVER.parent))
    try:
        import progress_driver as driver
    finally:
        sys.path.remove(str(DRIVER.parent))
    bar = re.compile(r"\s*\d{1,3}%\|[^|]*\| [\d.]+k?/12\.8k steps \[[\d,.?]+ steps/s(, return [\d.]+)?, ETA \S+\]")
    known_lines = {driver.START_LINE, driver.MESSAGE_LINE, driver.DONE_LINE}
    # A private tmux server (-L) with no user config, so the test neither sees nor disturbs the user's.
    tmux = ["tmux", "-L", f"rlbase-test-{os.getpid()}", "-f", os.devnull]
    env = {k: v for k, v in os.environ.items() if k != "TMUX"}
    command = " ".join(map(shlex.quote, [sys.executable, str(DRIVER), str(tmp_path / "run")])) + "; sleep 5"

    def capture() -> list[str]:
        proc = subprocess.run([*tmux, "capture-pane", "-p", "-t", "bar"], capture_output=True, env=env,
                              check=True, timeout=30)
        return [line.rstrip() for line in proc.stdout.decode("utf-8", "replace").splitlines() if line.strip()]

    screens = []
    subprocess.run([*tmux, "new-session", "-d", "-s", "bar", "-x", "100", "-y", "20", "-c", str(REPO), command],
                   env=env, check=True, timeout=30)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            screens.append(capture())
            if driver.DONE_LINE in screens[-1] or any("Traceback" in line for line in screens[-1]):
                break
            time.sleep(0.1)
        time.sleep(0.5)
        screens.append(capture())  # after close: nothing drawn again below the done line
    finally:
        subprocess.run([*tmux, "kill-server"], env=env, capture_output=True, timeout=30)

    final = screens[-1]
    assert driver.DONE_LINE in final, "\n".join(final)
    for screen in screens:
        shown = "\n".join(screen)
        bar_like = [line for line in screen if "steps/s" in line or "%|" in line]
        assert len(bar_like) <= 1, shown
        for line in screen:  # every line is a whole known line or one whole bar: no fragments, no escapes
            assert line in known_lines or bar.fullmatch(line), f"{line!r} in\n{shown}"
            assert "\x1b" not in line and "\r" not in line
        if bar_like:  # the start line was printed first, on its own line above the bar
            assert driver.START_LINE in screen[:screen.index(bar_like[0])], shown
        assert screen.count(driver.MESSAGE_LINE) <= 1, shown
    running = [s for s in screens if driver.DONE_LINE not in s and any(bar.fullmatch(line) for line in s)]
    assert running, "the bar was never seen while the driver ran"
    assert any(driver.MESSAGE_LINE in s for s in running), "the message was not shown while the bar ran"
    assert any("return" in line for s in running for line in s)

    assert final[:2] == [driver.START_LINE, driver.MESSAGE_LINE], "\n".join(final)
    assert len(final) == 4 and bar.fullmatch(final[2]) and final[2].lstrip().startswith("100%|"), "\n".join(final)
    assert final[-1] == driver.DONE_LINE
