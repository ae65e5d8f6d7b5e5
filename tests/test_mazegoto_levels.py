"""rlbase/MazeGoTo-v0's levels and language: the instruction vocabulary and templates, valid and
uniform layouts, observations that match the layout with a mission naming the target, and the
train/eval language split (held-out templates and targets, num_levels).

Dynamics, autoreset and seeding: test_mazegoto_dynamics.py; spaces, observations, rendering, env
checkers and construction: test_mazegoto_spaces.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rlbase.envs.instructions import (COLOURS, EVAL_TEMPLATES, HELDOUT_TARGETS, MAX_WORDS, OBJECTS, TOKENIZER,
                                      TRAIN_TEMPLATES, VOCABULARY, instruction_text)
from rlbase.envs.mazegoto import MazeGoToVecEnv
from rlbase.tokenizer import words_of

from tests.mazegotoref import grid_obs, layout_np


# ---------------------------------------------------------------- module API and language


def test_language_api():
    assert len(COLOURS) == 6 and len(OBJECTS) == 3
    words = {w for t in TRAIN_TEMPLATES for w in words_of(t.format(colour="", object=""))}
    assert words | set(COLOURS) | set(OBJECTS) == set(VOCABULARY)
    # Held-out paraphrases bring words training never shows: they read as <unk>.
    eval_words = {w for t in EVAL_TEMPLATES for w in words_of(t.format(colour="", object=""))}
    assert eval_words - words and not (eval_words - words) & set(VOCABULARY)
    assert "<unk>" in TOKENIZER.decode(TOKENIZER.encode(instruction_text(0, 0, 0, "eval"), MAX_WORDS))
    assert len(set(VOCABULARY)) == len(VOCABULARY)
    assert TOKENIZER.vocab[2:] == list(VOCABULARY)
    assert not set(TRAIN_TEMPLATES) & set(EVAL_TEMPLATES)
    longest = max(len(words_of(instruction_text(0, 0, t, s)))
                  for s, ts in (("train", TRAIN_TEMPLATES), ("eval", EVAL_TEMPLATES)) for t in range(len(ts)))
    assert longest <= MAX_WORDS
    assert instruction_text(2, 0, 0, "train") == "go to the blue ball"
    assert instruction_text(5, 2, 1, "eval") == "reach the grey key"
    with pytest.raises(ValueError, match="split"):
        instruction_text(0, 0, 0, "test")
    # Held-out targets: distinct, and every colour and every type is still a training target.
    assert len(set(HELDOUT_TARGETS)) == len(HELDOUT_TARGETS) == 4
    train = {(c, o) for c in range(6) for o in range(3)} - set(HELDOUT_TARGETS)
    assert {c for c, _ in train} == set(range(6)) and {o for _, o in train} == set(range(3))


# ---------------------------------------------------------------- layouts


@pytest.mark.parametrize("size,num_objects", [(8, 3), (6, 2), (6, 4), (8, 6), (11, 5), (16, 3)])
def test_layouts_are_valid(size, num_objects):
    env = MazeGoToVecEnv(1, size=size, num_objects=num_objects)
    seeds = torch.arange(2000) * 2
    lay = layout_np(env, seeds)
    agent, objects = lay["agent"], lay["objects"]
    assert objects.shape == (2000, num_objects, 2)
    inside = lambda p: (p >= 1).all(-1) & (p <= size - 2).all(-1)  # noqa: E731
    assert inside(agent).all() and inside(objects).all()
    for i in range(len(seeds)):
        squares = {tuple(p) for p in objects[i]}
        assert len(squares) == num_objects and tuple(agent[i]) not in squares
        combos = {(c, t) for c, t in zip(lay["colours"][i], lay["types"][i])}
        assert len(combos) == num_objects
    # All objects of an episode on one sub-lattice (rows of one parity, columns of one parity).
    parity = objects % 2
    assert (parity == parity[:, :1]).all()
    # Every interior square is used, by objects and by the agent.
    n = (size - 2) ** 2
    assert len({tuple(p) for p in objects.reshape(-1, 2)}) == n
    assert len({tuple(p) for p in agent}) == n
    # Distractors are uniform among the 17 other combinations, 7 of which share the target's colour
    # or type: some distractor shares one with probability 1 - C(10, k - 1) / C(17, k - 1).
    share = ((lay["colours"][:, 1:] == lay["colours"][:, :1]) | (lay["types"][:, 1:] == lay["types"][:, :1])).any(1)
    assert share.mean() == pytest.approx(1 - math.comb(10, num_objects - 1) / math.comb(17, num_objects - 1), abs=0.04)


def test_choices_are_roughly_uniform():
    env = MazeGoToVecEnv(1, split="eval")  # targets among all 18 combinations
    lay = layout_np(env, torch.arange(9000) * 2 + 1)
    target = lay["colours"][:, 0] * 3 + lay["types"][:, 0]
    counts = np.bincount(target, minlength=18)
    assert counts.min() > 400 and counts.max() < 600  # 500 expected
    templates = np.bincount(lay["template"], minlength=3)
    assert templates.min() > 2800 and templates.max() < 3200
    distractors = np.bincount((lay["colours"][:, 1:] * 3 + lay["types"][:, 1:]).reshape(-1), minlength=18)
    assert distractors.min() > 800 and distractors.max() < 1200  # 1000 expected


def test_observation_matches_the_layout_and_mission_names_the_target():
    env = MazeGoToVecEnv(32)
    obs, _ = env.reset(seed=4)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        lay = layout_np(env)
        for i in range(32):
            np.testing.assert_array_equal(obs["image"][i].numpy(), grid_obs(8, lay, i))
            text = TOKENIZER.decode(obs["mission"][i])
            assert text == env.instruction(i)
            colour, kind = lay["colours"][i, 0], lay["types"][i, 0]
            assert text == instruction_text(colour, kind, lay["template"][i], "train")
            # The named object is present, exactly once (combinations are distinct).
            words = text.split()
            named = [j for j in range(env.num_objects)
                     if COLOURS[lay["colours"][i, j]] in words and OBJECTS[lay["types"][i, j]] in words]
            assert named == [0]
        obs, *_ = env.step(torch.randint(0, 4, (32,), generator=g))


# ---------------------------------------------------------------- language split


def test_train_split_never_uses_eval_templates_or_heldout_targets():
    env = MazeGoToVecEnv(1)
    lay = layout_np(env, torch.arange(5000) * 2)
    targets = set(zip(lay["colours"][:, 0], lay["types"][:, 0]))
    assert len(targets) == 14 and not targets & set(HELDOUT_TARGETS)
    distractors = set(zip(lay["colours"][:, 1:].reshape(-1), lay["types"][:, 1:].reshape(-1)))
    assert set(HELDOUT_TARGETS) <= distractors  # held out as targets only
    assert set(lay["template"]) == set(range(len(TRAIN_TEMPLATES)))
    # Through the env: missions of many episodes are train-template instructions.
    env = MazeGoToVecEnv(64, num_levels=0)
    obs, _ = env.reset(seed=0)
    train_texts = {instruction_text(c, o, t, "train") for c in range(6) for o in range(3)
                   for t in range(len(TRAIN_TEMPLATES)) if (c, o) not in HELDOUT_TARGETS}
    for _ in range(10):
        assert {TOKENIZER.decode(m) for m in obs["mission"]} <= train_texts
        env.start_next_episode(env._all)
        obs = env._observe()


@pytest.mark.parametrize("eval_targets", ["all", "heldout", "trained"])
def test_eval_split_uses_only_eval_templates(eval_targets):
    env = MazeGoToVecEnv(1, split="eval", eval_targets=eval_targets)
    lay = layout_np(env, torch.arange(3000) * 2 + 1)
    targets = set(zip(lay["colours"][:, 0], lay["types"][:, 0]))
    every = {(c, o) for c in range(6) for o in range(3)}
    expected = {"all": every, "heldout": set(HELDOUT_TARGETS), "trained": every - set(HELDOUT_TARGETS)}
    assert targets == expected[eval_targets]
    assert set(lay["template"]) == set(range(len(EVAL_TEMPLATES)))
    vec = MazeGoToVecEnv(64, split="eval", eval_targets=eval_targets)
    obs, _ = vec.reset(seed=0)
    assert (vec.level_seeds() % 2 == 1).all()
    as_read = lambda text: TOKENIZER.decode(TOKENIZER.encode(text, MAX_WORDS))  # noqa: E731 (unseen verbs: <unk>)
    eval_texts = {as_read(instruction_text(c, o, t, "eval")) for c in range(6) for o in range(3) for t in range(3)}
    assert {TOKENIZER.decode(m) for m in obs["mission"]} <= eval_texts
    assert all(as_read(vec.instruction(i)) == TOKENIZER.decode(obs["mission"][i]) for i in range(64))


def test_num_levels_restricts_training_episodes():
    env = MazeGoToVecEnv(32, num_levels=3)
    env.reset(seed=0)
    seen = set()
    for _ in range(5):
        lay = layout_np(env)
        seen.update((tuple(lay["agent"][i]), lay["objects"][i].tobytes(), env.instruction(i)) for i in range(32))
        env.start_next_episode(env._all)
    assert len(seen) == 3
