"""Checkpoints: safetensors round trip, atomic layout, and refusing to unpickle anything."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from rlbase import transfer
from rlbase.agents import dqn, get_agent
from rlbase.checkpoint import (find_checkpoint, load_checkpoint, optimizer_from_tensors, optimizer_to_tensors,
                               save_checkpoint)
from rlbase.errors import RlbaseError
from rlbase.run import Run

OBS_SPACE = gym.spaces.Box(-np.inf, np.inf, (4,), np.float32)
ACT_SPACE = gym.spaces.Discrete(2)


def tiny_config(dueling: bool = False) -> dqn.DQNConfig:
    return dqn.DQNConfig(env_id="CartPole-v1", hidden_sizes=(16, 16), dueling=dueling, learning_rate=1e-2)


def make_agent(seed: int, dueling: bool = False, fused: bool = False):
    torch.manual_seed(seed)
    cfg = tiny_config(dueling)
    backbone = transfer.parse(cfg, OBS_SPACE)
    q = dqn.build_q_network(backbone, OBS_SPACE, ACT_SPACE, dueling)
    target = dqn.build_q_network(backbone, OBS_SPACE, ACT_SPACE, dueling)
    target.load_state_dict(q.state_dict())
    optimizer = torch.optim.Adam(q.parameters(), lr=cfg.learning_rate, eps=cfg.adam_eps, fused=fused)
    return q, target, optimizer


class _Env:  # what a Run reads of its env outside the loop
    device, num_envs = torch.device("cpu"), 1


def make_run(run_dir: Path, dueling: bool, resume=None) -> Run:
    cfg = tiny_config(dueling)
    return Run(get_agent("dqn"), cfg, _Env(), transfer.parse(cfg, OBS_SPACE), run_dir=run_dir, resume=resume)


def adam_steps(q, optimizer, steps: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        obs = torch.randn(32, 4, generator=gen)
        loss = (q(obs) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def params_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("dueling,fused", [(False, False), (True, False), (False, True)])
def test_dqn_state_round_trip(tmp_path, dueling, fused):
    q, target, optimizer = make_agent(0, dueling, fused)
    adam_steps(q, optimizer, 5, seed=1)  # Adam moments and step counts are non-trivial now
    run = make_run(tmp_path, dueling)
    counters = run.restore(modules={"q": q, "target": target}, optimizer=optimizer,
                           counters={"num_updates": 56, "update_credit": 3, "target_syncs": 2})
    run.global_step = 1234
    torch.randint(10, (3,), generator=run.generator)
    folder = run.save()
    assert (folder / "model.safetensors").is_file() and (folder / "state.json").is_file()
    tensors = run.tensors()

    loaded_tensors, loaded_state, buffer = load_checkpoint(tmp_path)
    assert buffer is None
    assert loaded_state["step"] == 1234 and loaded_state["counters"] == {"global_step": 1234, **counters}
    assert loaded_state["algo"] == "dqn" and loaded_state["config"]["hidden_sizes"] == [16, 16]
    assert loaded_tensors.keys() == tensors.keys()
    for k in tensors:
        assert torch.equal(loaded_tensors[k], tensors[k].cpu()), k

    q2, target2, optimizer2 = make_agent(99, dueling, fused)  # different init: everything must come from the file
    assert not params_equal(q, q2)
    run2 = make_run(tmp_path, dueling, resume=load_checkpoint(tmp_path))
    counters2 = run2.restore(modules={"q": q2, "target": target2}, optimizer=optimizer2,
                             counters={"num_updates": 0, "update_credit": 0, "target_syncs": 0})
    assert counters2 == counters and run2.global_step == 1234 and run2.last_saved_step == 1234
    assert params_equal(q, q2) and params_equal(target, target2)
    assert torch.equal(run.generator.get_state(), run2.generator.get_state())

    # Identical subsequent Adam steps: same moments, same step count, same hyperparameters.
    adam_steps(q, optimizer, 3, seed=2)
    adam_steps(q2, optimizer2, 3, seed=2)
    assert params_equal(q, q2)
    g = optimizer.param_groups[0]
    g2 = optimizer2.param_groups[0]
    assert g2["lr"] == g["lr"] and tuple(g2["betas"]) == tuple(g["betas"]) and g2["eps"] == g["eps"]


def test_optimizer_tensors_round_trip_without_checkpoint():
    q, _, optimizer = make_agent(0)
    adam_steps(q, optimizer, 4, seed=3)
    tensors, meta = optimizer_to_tensors(optimizer)
    assert tensors and all(torch.is_tensor(v) for v in tensors.values())
    json.dumps(meta)  # the rest must be JSON-able
    q2, _, optimizer2 = make_agent(0)
    q2.load_state_dict(q.state_dict())
    # Clone, as a file round trip would: torch's load_state_dict keeps (shares) same-dtype tensors.
    optimizer_from_tensors(optimizer2, {k: v.clone() for k, v in tensors.items()}, json.loads(json.dumps(meta)))
    adam_steps(q, optimizer, 2, seed=4)
    adam_steps(q2, optimizer2, 2, seed=4)
    assert params_equal(q, q2)


def test_save_with_buffer(tmp_path):
    buffer = {"frames": torch.arange(12, dtype=torch.uint8).view(3, 4), "pos": torch.tensor([3, 1])}
    save_checkpoint(tmp_path, 10, {"w": torch.ones(2)}, {}, buffer=buffer)
    _, _, loaded = load_checkpoint(tmp_path, with_buffer=True)
    assert loaded.keys() == buffer.keys()
    assert all(torch.equal(loaded[k], buffer[k]) for k in buffer)
    _, _, not_loaded = load_checkpoint(tmp_path, with_buffer=False)
    assert not_loaded is None


def test_latest_and_keep_last(tmp_path):
    steps = [100, 200, 300, 400, 500]
    for s in steps:
        save_checkpoint(tmp_path, s, {"w": torch.full((2,), float(s))}, {"note": s}, keep_last=3)
    root = tmp_path / "checkpoints"
    latest = json.loads((root / "latest.json").read_text())["path"]
    kept = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert len(kept) == 3 and latest in kept
    assert find_checkpoint(tmp_path).name == latest
    tensors, state, _ = load_checkpoint(tmp_path)
    assert state["step"] == 500 and state["note"] == 500 and float(tensors["w"][0]) == 500
    # The three newest survive and each loads as its own step.
    kept_steps = sorted(load_checkpoint(root / name)[1]["step"] for name in kept)
    assert kept_steps == steps[-3:]
    # No temporary files are left behind.
    assert not [p for p in root.iterdir() if p.name.startswith(".")]


def test_crash_leftover_does_not_shadow_latest(tmp_path):
    save_checkpoint(tmp_path, 100, {"w": torch.ones(1)}, {})
    root = tmp_path / "checkpoints"
    # A crash while writing the next checkpoint leaves a half-written temp folder.
    tmp = root / ".step_0000000200.tmp"
    tmp.mkdir()
    (tmp / "model.safetensors").write_bytes(b"\x00" * 5)
    _, state, _ = load_checkpoint(tmp_path)
    assert state["step"] == 100
    save_checkpoint(tmp_path, 200, {"w": torch.ones(1) * 2}, {})  # the next save cleans it up
    _, state, _ = load_checkpoint(tmp_path)
    assert state["step"] == 200
    assert not tmp.exists()


# ---------------------------------------------------------------- malicious and broken files


class _Marker:
    """Unpickling this object creates the marker file: proof that a pickle was executed."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def _payload(marker: Path) -> dict:
    return {"q.head.weight": _Marker(marker), "note": "looks like a state dict"}


def test_marker_pickle_really_executes(tmp_path):
    """Sanity check of the fixture: loading this pickle does run code."""
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_payload(control)))
    assert control.exists()


def _write_checkpoint_dir(root: Path) -> Path:
    save_checkpoint(root, 10, {"w": torch.ones(3)}, {})
    return find_checkpoint(root) / "model.safetensors"


@pytest.mark.parametrize("kind", ["torch_save", "pickle_dumps"])
@pytest.mark.parametrize("target", ["file", "run_dir"])
def test_pickle_is_refused_never_unpickled(tmp_path, kind, target):
    marker = tmp_path / "UNPICKLED"
    model = _write_checkpoint_dir(tmp_path / "run")
    if kind == "torch_save":
        torch.save(_payload(marker), model)
    else:
        model.write_bytes(pickle.dumps(_payload(marker)))
    path = model if target == "file" else tmp_path / "run"
    with pytest.raises(RlbaseError, match="is a pickle or torch.save file") as exc_info:
        load_checkpoint(path)
    assert exc_info.value.exit_code == 1
    assert not marker.exists(), "the pickle was executed"


def test_old_protocol_pickle_is_refused(tmp_path):
    marker = tmp_path / "UNPICKLED"
    model = _write_checkpoint_dir(tmp_path / "run")
    model.write_bytes(pickle.dumps(_payload(marker), protocol=0))
    with pytest.raises(RlbaseError):
        load_checkpoint(model)
    assert not marker.exists()


def test_truncated_safetensors(tmp_path):
    model = _write_checkpoint_dir(tmp_path)
    data = model.read_bytes()
    for cut in (len(data) - 4, len(data) // 2, 12, 3):
        model.write_bytes(data[:cut])
        with pytest.raises(RlbaseError):
            load_checkpoint(tmp_path)


def test_garbage_safetensors(tmp_path):
    model = _write_checkpoint_dir(tmp_path)
    model.write_bytes(np.random.default_rng(0).integers(1, 255, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(RlbaseError, match="safetensors"):
        load_checkpoint(tmp_path)
    model.write_bytes(b"")
    with pytest.raises(RlbaseError):
        load_checkpoint(tmp_path)


def test_missing_paths(tmp_path):
    with pytest.raises(RlbaseError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")
    with pytest.raises(RlbaseError):
        load_checkpoint(tmp_path)  # an empty folder: no run, no checkpoint
    model = _write_checkpoint_dir(tmp_path / "run")
    model.unlink()
    with pytest.raises(RlbaseError):
        load_checkpoint(tmp_path / "run")


def test_corrupt_latest_and_state(tmp_path):
    model = _write_checkpoint_dir(tmp_path)
    (model.parent / "state.json").write_text("{not json")
    with pytest.raises(RlbaseError, match="state"):
        load_checkpoint(tmp_path)
    (tmp_path / "checkpoints" / "latest.json").write_text("garbage")
    with pytest.raises(RlbaseError, match="step_0000000010 is incomplete .*state.json is corrupt"):
        load_checkpoint(tmp_path)
