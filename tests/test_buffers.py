"""ReplayBuffer against a naive reference (tests/replayref.py).

A scripted stream of envs emits observations whose newest frame carries a unique id, so every
observation the buffer hands back can be traced to the exact transition it must come from. The
reference keeps, per env, a plain Python list of the real transitions (obs, action, reward,
terminal, done, next observation) and computes n-step targets with a plain loop.

Here: frame stacks and n-step returns at every row, uniform and prioritized sampling, importance
weights, state_dict round trips and resume, sizes, and Dict observations.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from rlbase.buffers import ReplayBuffer

from tests.replayref import GAMMA, HW, VEC_DIM, ScriptedEnvs, check_transition, feed, make_buffer, sampleable_rows

CASES = [  # (frame_stack, num_envs, n_step)
    (1, 3, 1), (1, 3, 3), (4, 2, 1), (4, 3, 3),
]


@pytest.mark.parametrize("wrap", [False, True], ids=["nowrap", "wrap"])
@pytest.mark.parametrize("frame_stack,num_envs,n_step", CASES)
def test_stack_and_n_step_at_every_row(frame_stack, num_envs, n_step, wrap):
    stream = ScriptedEnvs(num_envs, frame_stack, seed=10 * frame_stack + n_step)
    steps = 400 if wrap else 150
    capacity = num_envs * (24 if wrap else 400)
    buffer = make_buffer(stream, capacity, n_step)
    feed(stream, buffer, steps)
    for e in range(num_envs):
        rows = sampleable_rows(buffer, e)
        assert rows, "nothing sampleable"
        t = torch.tensor(rows)
        env = torch.full_like(t, e)
        stacks = buffer.stack(t, env)
        returns, discounts, nsteps = buffer.n_step_return(t, env)
        next_obs = buffer.stack(t + nsteps, env)
        actions = buffer.actions[t % buffer.slots, env]
        indices = []
        for k in range(len(rows)):
            rec = check_transition(stream, n_step, stacks[k], actions[k], returns[k], next_obs[k], discounts[k])
            assert rec.env == e
            indices.append(stream.by_id[stream.decode(rec.obs)][1])
        # The sampleable rows are exactly a contiguous, recent stretch of this env's real transitions.
        indices.sort()
        assert indices == list(range(indices[0], indices[-1] + 1))
        assert indices[-1] >= len(stream.records[e]) - n_step
        if wrap:
            assert indices[0] > 0, "buffer should have wrapped and dropped old transitions"
            assert len(indices) >= (buffer.max_age - n_step) // 2
        else:
            assert indices[0] == 0


def test_stack_has_zero_frames_at_episode_start():
    stream = ScriptedEnvs(2, 4, seed=3, p_end=0.3)
    buffer = make_buffer(stream, 2 * 200, 1)
    feed(stream, buffer, 60)
    seen_padding = 0
    for e in range(2):
        for t in sampleable_rows(buffer, e):
            obs = buffer.stack(torch.tensor([t]), torch.tensor([e]))[0].numpy()
            rec = stream.lookup(obs)
            np.testing.assert_array_equal(obs, rec.obs)
            zero_frames = int((obs.reshape(4, -1) == 0).all(axis=1).sum())
            seen_padding += zero_frames > 0
            # Padding frames come first, never after a real frame.
            real = (obs.reshape(4, -1) != 0).any(axis=1)
            assert list(real) == sorted(real)
    assert seen_padding > 5  # episode starts ([0, 0, 0, f]) were covered


SAMPLE_CASES = [  # (frame_stack, num_envs, n_step, capacity per env)
    (1, 3, 1, 300), (1, 2, 3, 300), (4, 2, 1, 300), (4, 3, 3, 300),
    (4, 2, 3, 20), (1, 3, 1, 12),  # tiny rings: wrap around many times
]


@pytest.mark.parametrize("prioritized", [False, True], ids=["uniform", "prioritized"])
@pytest.mark.parametrize("frame_stack,num_envs,n_step,slots", SAMPLE_CASES)
def test_samples_are_real_transitions(frame_stack, num_envs, n_step, slots, prioritized):
    stream = ScriptedEnvs(num_envs, frame_stack, seed=100 + slots + n_step)
    buffer = make_buffer(stream, num_envs * slots, n_step, prioritized)
    gen = torch.Generator().manual_seed(0)
    buffer.start(stream.obs_tensor())
    checked = 0
    for step in range(250):
        buffer.add(*stream.step())
        if step % 25 != 24 or not buffer.can_sample():
            continue
        for _ in range(2):
            batch = buffer.sample(64, gen, beta=0.5)
            assert batch.obs.shape == (64, *stream.obs_shape) and batch.obs.dtype == stream.dtype
            assert batch.next_obs.shape == batch.obs.shape
            assert batch.actions.dtype == torch.int64
            for k in range(64):
                rec = check_transition(stream, n_step, batch.obs[k], batch.actions[k], batch.returns[k],
                                       batch.next_obs[k], batch.discounts[k])
                assert int(batch.indices[k]) % num_envs == rec.env
                checked += 1
            if prioritized:
                assert float(batch.weights.max()) == pytest.approx(1.0)
                assert bool((batch.weights <= 1.0 + 1e-6).all()) and bool((batch.weights > 0).all())
            else:
                assert bool((batch.weights == 1).all())
            if prioritized:  # move priorities around so later batches see a non-flat tree
                td = torch.rand(64, generator=gen) * 3
                buffer.update_priorities(batch.indices, td)
    assert checked >= 64 * 2 * 8


def test_samples_cover_terminal_and_truncated_cases():
    """The random script must actually exercise all the cut-off rules (else the tests above prove little)."""
    stream = ScriptedEnvs(3, 4, seed=7)
    buffer = make_buffer(stream, 3 * 300, 3)
    feed(stream, buffer, 200)
    batch = buffer.sample(2048, torch.Generator().manual_seed(1))
    recs = [stream.lookup(o.numpy()) for o in batch.obs]
    discounts = batch.discounts.numpy()
    assert (discounts == 0).sum() > 20  # terminal (incl. life loss) within n steps
    assert np.isclose(discounts, GAMMA ** 3).sum() > 20  # full n steps
    assert (np.isclose(discounts, GAMMA) | np.isclose(discounts, GAMMA ** 2)).sum() > 20  # cut by an episode end
    assert any(r.terminal and not r.done for r in recs)  # life loss
    assert any(r.done and not r.terminal for r in recs)  # truncation
    assert any(r.done and r.terminal for r in recs)  # termination


def _prioritized_setup(alpha=0.6):
    stream = ScriptedEnvs(2, 1, seed=5, p_end=0.05)
    buffer = ReplayBuffer(2 * 200, 2, stream.obs_shape, stream.dtype, torch.device("cpu"),
                          n_step=1, gamma=GAMMA, prioritized=True, alpha=alpha)
    feed(stream, buffer, 60)
    return stream, buffer


def test_prioritized_update_shifts_sampling():
    stream, buffer = _prioritized_setup()
    gen = torch.Generator().manual_seed(0)
    # Every sampleable row (all start with equal priority) shows up in one big stratified batch.
    all_idx = torch.unique(buffer.sample(4096, gen).indices)
    expected_rows = sum(len(sampleable_rows(buffer, e)) for e in range(2))
    assert len(all_idx) == expected_rows
    buffer.update_priorities(all_idx, torch.full((len(all_idx),), 0.01))
    hot = all_idx[torch.randperm(len(all_idx), generator=gen)[:3]]
    buffer.update_priorities(hot, torch.full((3,), 10.0))

    counts = torch.zeros(4096 * 4, dtype=torch.bool)
    for b in range(4):
        batch = buffer.sample(4096, gen, beta=0.4)
        counts[b * 4096:(b + 1) * 4096] = torch.isin(batch.indices, hot)
    frac = counts.float().mean().item()
    p_hot = (10.0 + 1e-6) ** 0.6
    p_cold = (0.01 + 1e-6) ** 0.6
    n = len(all_idx)
    expected = 3 * p_hot / (3 * p_hot + (n - 3) * p_cold)  # proportional prioritization
    assert 3 / n < 0.1 < 0.5 < expected
    assert frac == pytest.approx(expected, abs=0.03)


def test_importance_weights():
    stream, buffer = _prioritized_setup()
    gen = torch.Generator().manual_seed(1)
    all_idx = torch.unique(buffer.sample(4096, gen).indices)
    td = torch.rand(len(all_idx), generator=gen) * 5
    buffer.update_priorities(all_idx, td)
    priority = {int(i): (float(d) + 1e-6) ** 0.6 for i, d in zip(all_idx, td)}
    for beta in (0.0, 0.4, 1.0):
        batch = buffer.sample(256, gen, beta=beta)
        assert float(batch.weights.max()) == pytest.approx(1.0)
        assert bool((batch.weights <= 1.0 + 1e-6).all())
        # w_i = (N P(i))^-beta / max_j w_j, with P proportional to priority.
        p = np.array([priority[int(i)] for i in batch.indices])
        w = (p / p.sum()) ** -beta
        np.testing.assert_allclose(batch.weights.numpy(), w / w.max(), rtol=1e-4)


@pytest.mark.parametrize("prioritized", [False, True], ids=["uniform", "prioritized"])
def test_state_dict_round_trip_through_safetensors(tmp_path, prioritized):
    stream = ScriptedEnvs(2, 4, seed=11)
    buffer = make_buffer(stream, 2 * 50, 3, prioritized)
    feed(stream, buffer, 120)  # wrapped
    if prioritized:
        batch = buffer.sample(32, torch.Generator().manual_seed(3))
        buffer.update_priorities(batch.indices, torch.linspace(0, 4, 32))
    save_file(buffer.state_dict(), str(tmp_path / "buffer.safetensors"))
    restored = make_buffer(stream, 2 * 50, 3, prioritized)
    restored.load_state_dict(load_file(str(tmp_path / "buffer.safetensors")))
    assert restored.transitions_added == buffer.transitions_added
    assert restored.can_sample()
    for seed in range(3):
        a = buffer.sample(64, torch.Generator().manual_seed(seed))
        b = restored.sample(64, torch.Generator().manual_seed(seed))
        for name in a._fields:
            assert torch.equal(getattr(a, name), getattr(b, name)), name
    # Both keep going identically: same new steps, same samples, all of them real transitions.
    for _ in range(10):
        step = stream.step()
        buffer.add(*step)
        restored.add(*step)
    a = buffer.sample(64, torch.Generator().manual_seed(9))
    b = restored.sample(64, torch.Generator().manual_seed(9))
    for name in a._fields:
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    for k in range(64):
        check_transition(stream, 3, b.obs[k], b.actions[k], b.returns[k], b.next_obs[k], b.discounts[k])


def test_load_state_dict_reads_the_old_done_field():
    """Buffers saved while `episode_end` was called `done` still load into it."""
    stream = ScriptedEnvs(2, 4, seed=5)
    buffer = make_buffer(stream, 2 * 50, 3)
    feed(stream, buffer, 60)
    state = buffer.state_dict()
    state["done"] = state.pop("episode_end")
    restored = make_buffer(stream, 2 * 50, 3)
    restored.load_state_dict(state)
    assert restored.episode_end.any() and torch.equal(restored.episode_end, buffer.episode_end)


def test_load_state_dict_rejects_wrong_shape():
    stream = ScriptedEnvs(2, 1, seed=0)
    buffer = make_buffer(stream, 2 * 50, 1)
    other = make_buffer(stream, 2 * 60, 1)
    with pytest.raises(ValueError):
        other.load_state_dict(buffer.state_dict())


def assert_priorities_match_sampleable_rows(buffer: ReplayBuffer) -> None:
    """Prioritized replay can draw exactly the rows the uniform sampler can: no complete transition
    is left without priority (never replayed), no stale or incomplete row keeps one."""
    expected = set()
    for e in range(buffer.num_envs):
        expected |= {(t % buffer.slots) * buffer.num_envs + e for t in sampleable_rows(buffer, e)}
    leaves = torch.arange(buffer.slots * buffer.num_envs)
    nonzero = set(leaves[buffer.tree.get(leaves) > 0].tolist())
    assert not expected - nonzero, f"complete transitions without priority: {sorted(expected - nonzero)}"
    assert not nonzero - expected, f"rows with priority that must not be sampled: {sorted(nonzero - expected)}"


@pytest.mark.parametrize("frame_stack,num_envs,n_step,slots", SAMPLE_CASES)
def test_priorities_cover_exactly_the_sampleable_rows(frame_stack, num_envs, n_step, slots):
    stream = ScriptedEnvs(num_envs, frame_stack, seed=200 + slots + n_step)
    buffer = make_buffer(stream, num_envs * slots, n_step, prioritized=True)
    gen = torch.Generator().manual_seed(0)
    buffer.start(stream.obs_tensor())
    for step in range(120):
        buffer.add(*stream.step())
        if step % 10 == 9 and buffer.can_sample():
            assert_priorities_match_sampleable_rows(buffer)
            batch = buffer.sample(16, gen)
            buffer.update_priorities(batch.indices, torch.rand(16, generator=gen))


@pytest.mark.parametrize("prioritized", [False, True], ids=["uniform", "prioritized"])
@pytest.mark.parametrize("n_step", [1, 3])
def test_no_boundary_crossing_after_resume(tmp_path, n_step, prioritized):
    """A resumed run reloads the buffer, resets the envs and calls `start` (as dqn.train does).

    The episodes that were running at save time are abandoned: their last stored transitions must
    not be linked to the first frame of the new episodes (they end there, as a truncation would).
    """
    stream = ScriptedEnvs(2, 4, seed=21, p_end=0.02)
    buffer = make_buffer(stream, 2 * 200, n_step, prioritized)
    feed(stream, buffer, 80)
    save_file(buffer.state_dict(), str(tmp_path / "buffer.safetensors"))
    restored = make_buffer(stream, 2 * 200, n_step, prioritized)
    restored.load_state_dict(load_file(str(tmp_path / "buffer.safetensors")))
    stream.reset_all()  # env.reset() of the resumed run
    restored.start(stream.obs_tensor())
    for _ in range(20):
        restored.add(*stream.step())
    gen = torch.Generator().manual_seed(0)
    for _ in range(10):
        batch = restored.sample(256, gen)
        for k in range(256):
            check_transition(stream, n_step, batch.obs[k], batch.actions[k], batch.returns[k],
                             batch.next_obs[k], batch.discounts[k])
    if prioritized:
        assert_priorities_match_sampleable_rows(restored)


def test_capacity_too_small_is_rejected():
    with pytest.raises(ValueError):
        ReplayBuffer(2 * 6, 2, (4, HW, HW), torch.uint8, torch.device("cpu"), frame_stack=4, n_step=3)


@pytest.mark.parametrize("prioritized", [False, True])
def test_atari_bytes_per_transition(prioritized):
    capacity = 4 * 1000
    buffer = ReplayBuffer(capacity, 4, (4, 84, 84), torch.uint8, torch.device("cpu"), frame_stack=4,
                          prioritized=prioritized)
    total = sum(t.numel() * t.element_size() for t in buffer.state_dict().values())
    per_transition = total / capacity
    assert per_transition < 8000
    assert 1_000_000 * per_transition < 8e9  # 1M Atari transitions well under 8 GB
    # Frames are stored once: the 84x84 frame dominates, not a 4x stack of it (28,224 bytes).
    assert buffer.frames.shape[2:] == (84, 84)


def as_dict(obs: torch.Tensor) -> dict[str, torch.Tensor]:
    """A Dict observation made of a vector observation: the vector, and its id as an int64 key."""
    return {"vec": obs, "id": obs[:, :1].long()}


@pytest.mark.parametrize("prioritized", [False, True], ids=["uniform", "prioritized"])
def test_dict_observations_match_the_box_buffer_key_by_key(tmp_path, prioritized):
    """A Dict buffer fed the same stream samples the same transitions as a Box buffer, each key in its dtype."""
    stream = ScriptedEnvs(3, 1, seed=21)
    box = make_buffer(stream, 3 * 40, 3, prioritized)
    keyed = ReplayBuffer(3 * 40, 3, {"vec": (VEC_DIM,), "id": (1,)}, {"vec": torch.float32, "id": torch.int64},
                         torch.device("cpu"), n_step=3, gamma=GAMMA, prioritized=prioritized)
    first = stream.obs_tensor()
    box.start(first)
    keyed.start(as_dict(first))
    for _ in range(150):  # wraps the ring several times
        actions, rewards, terminal, dones, next_obs, final_obs = stream.step()
        box.add(actions, rewards, terminal, dones, next_obs, final_obs)
        keyed.add(actions, rewards, terminal, dones, as_dict(next_obs), as_dict(final_obs))
    a = box.sample(96, torch.Generator().manual_seed(4))
    b = keyed.sample(96, torch.Generator().manual_seed(4))
    assert b.obs["id"].dtype == torch.int64 and b.obs["vec"].dtype == torch.float32
    for name in ("obs", "next_obs"):
        assert torch.equal(getattr(b, name)["vec"], getattr(a, name))
        assert torch.equal(getattr(b, name)["id"], getattr(a, name)[:, :1].long())
    for name in ("actions", "returns", "discounts", "weights", "indices"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    for k in range(96):  # and they are real transitions
        check_transition(stream, 3, b.obs["vec"][k], b.actions[k], b.returns[k], b.next_obs["vec"][k], b.discounts[k])
    parts = b.split(32)
    assert len(parts) == 3 and torch.equal(parts[1].obs["id"], b.obs["id"][32:64])
    # Saved key by key, and restored into a fresh buffer that then samples the same.
    save_file(keyed.state_dict(), str(tmp_path / "buffer.safetensors"))
    restored = ReplayBuffer(3 * 40, 3, {"vec": (VEC_DIM,), "id": (1,)}, {"vec": torch.float32, "id": torch.int64},
                            torch.device("cpu"), n_step=3, gamma=GAMMA, prioritized=prioritized)
    restored.load_state_dict(load_file(str(tmp_path / "buffer.safetensors")))
    c = restored.sample(96, torch.Generator().manual_seed(4))
    assert torch.equal(c.obs["vec"], b.obs["vec"]) and torch.equal(c.indices, b.indices)


def test_dict_observations_refuse_frame_stacking():
    with pytest.raises(ValueError, match="frame_stack"):
        ReplayBuffer(100, 2, {"a": (4, 8, 8)}, {"a": torch.uint8}, torch.device("cpu"), frame_stack=4)
