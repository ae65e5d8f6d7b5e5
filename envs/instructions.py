"""The instruction language of rlbase/MazeGoTo-v0: the objects an instruction can name, the templates
that phrase it in each split, and the vocabulary its token ids (the env's `mission` observation)
are read with.

Splits hold out language, not only levels. The eval split phrases missions only with
EVAL_TEMPLATES, never used in training (the train split uses TRAIN_TEMPLATES), and the
combinations in HELDOUT_TARGETS are never the *target* in the train split (they do appear there as
distractors, so every word is seen). In the eval split targets are drawn among all combinations
(`eval_targets="all"`) or among HELDOUT_TARGETS only (`eval_targets="heldout"`: systematic
generalisation). The vocabulary is what training shows, so the held-out paraphrases' own words
read as <unk>, as unseen words do for any tokenizer built from its training data.

Module-level API: the env (rlbase.envs.mazegoto) and the text pretraining task (rlbase.datasets)
read it; combination c is (colour c // len(OBJECTS), object c % len(OBJECTS)).
"""

from __future__ import annotations

import torch

from rlbase.envs.native import SPLITS, check_choice
from rlbase.tokenizer import Tokenizer

COLOURS: tuple[str, ...] = ("red", "green", "blue", "purple", "yellow", "grey")
OBJECTS: tuple[str, ...] = ("ball", "box", "key")
TRAIN_TEMPLATES: tuple[str, ...] = (
    "go to the {colour} {object}",
    "get to the {colour} {object}",
    "find the {colour} {object}",
    "walk to the {colour} {object}",
    "move to the {colour} {object}",
    "please go to the {colour} {object}",
    "please find the {colour} {object}",
)
EVAL_TEMPLATES: tuple[str, ...] = (
    "navigate to the {colour} {object}",
    "reach the {colour} {object}",
    "head over to the {colour} {object}",
)
# (colour, object) index pairs never the target in training: every colour and every type still
# is a training target with other partners (red box, blue key, purple ball, grey box held out).
HELDOUT_TARGETS: tuple[tuple[int, int], ...] = ((0, 1), (2, 2), (3, 0), (5, 1))
# Fixed word order (token ids must not move when templates are added: append new words at the end).
# The vocabulary is what training shows: the words of TRAIN_TEMPLATES, colours and objects. Words
# only the held-out paraphrases use ("navigate", "reach", "head", "over") read as <unk>, as unseen
# words do for any tokenizer built from its training data.
VOCABULARY: tuple[str, ...] = (
    "go", "to", "the", "get", "find", "walk", "move", "please",
    *COLOURS, *OBJECTS,
)
MAX_WORDS: int = 8
TOKENIZER = Tokenizer(VOCABULARY)

SPLIT_TEMPLATES = {"train": TRAIN_TEMPLATES, "eval": EVAL_TEMPLATES}
NUM_COMBOS = len(COLOURS) * len(OBJECTS)  # combination c is (colour c // 3, object c % 3)


def instruction_text(colour: int, obj: int, template: int, split: str) -> str:
    """The instruction naming (COLOURS[colour], OBJECTS[obj]) in template `template` of `split`'s
    templates (TRAIN_TEMPLATES or EVAL_TEMPLATES)."""
    if split not in SPLIT_TEMPLATES:
        raise ValueError(f"split must be one of {tuple(SPLIT_TEMPLATES)}, got {split!r}")
    return SPLIT_TEMPLATES[split][template].format(colour=COLOURS[colour], object=OBJECTS[obj])


EVAL_TARGETS = ("all", "heldout", "trained")


def target_combinations(split: str, eval_targets: str = "all") -> list[int]:
    """The combinations an env of `split` draws its targets from: in training all but HELDOUT_TARGETS;
    in evaluation all of them, HELDOUT_TARGETS only (`eval_targets="heldout"`: held-out pairs), or the
    training targets only (`eval_targets="trained"`: held-out paraphrases of pairs seen in training)."""
    check_choice("split", split, SPLITS)
    check_choice("eval_targets", eval_targets, EVAL_TARGETS)
    heldout = [c * len(OBJECTS) + o for c, o in HELDOUT_TARGETS]
    if split == "train" or eval_targets == "trained":
        return [c for c in range(NUM_COMBOS) if c not in heldout]
    return heldout if eval_targets == "heldout" else list(range(NUM_COMBOS))


def mission_table() -> torch.Tensor:
    """(templates * NUM_COMBOS, MAX_WORDS) int64 token ids of every instruction: row
    t * NUM_COMBOS + c phrases combination c with template t of TRAIN_TEMPLATES + EVAL_TEMPLATES."""
    texts = [t.format(colour=COLOURS[c // len(OBJECTS)], object=OBJECTS[c % len(OBJECTS)])
             for t in TRAIN_TEMPLATES + EVAL_TEMPLATES for c in range(NUM_COMBOS)]
    return TOKENIZER.encode_batch(texts, MAX_WORDS)


__all__ = ["COLOURS", "OBJECTS", "TRAIN_TEMPLATES", "EVAL_TEMPLATES", "HELDOUT_TARGETS", "VOCABULARY", "MAX_WORDS",
           "TOKENIZER", "SPLIT_TEMPLATES", "NUM_COMBOS", "EVAL_TARGETS", "instruction_text", "target_combinations",
           "mission_table"]
