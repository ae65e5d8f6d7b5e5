"""Configuration: dataclasses whose field docstrings become `--help`, presets from data files, CLI overrides.

Resolution order for a training run: dataclass defaults < env-family preset < per-env preset < the
named recipe of --preset (its `all` values, its family's, its env's) < --config file < --flags.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import sys
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_type_hints

from rlbase.envs import atari
from rlbase.errors import UsageError
# Re-exported: the presets' resolution lives in rlbase.preset_values; callers import it from here too.
from rlbase.preset_values import (PRESET_FAMILIES, _preset_file, describe_presets, env_family,  # noqa: F401
                                  load_preset, recipe_names, recipe_values)


@dataclass
class CommonConfig:
    """Options shared by every algorithm."""

    env_id: str = ""
    """Environment id: any Gymnasium id (CartPole-v1, ALE/Breakout-v5, rlbase/Maze-v0, ...), or
    MODULE:ID for your own env (MODULE is imported first and registers ID, Gymnasium's convention)."""
    gym_packages: tuple[str, ...] = ()
    """Packages to import before making the env, for the env ids they register (PKG,PKG,...)."""
    env_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Keyword arguments of the environment, as KEY=VALUE,KEY=VALUE (e.g. size=15,obs_mode=pixels)."""
    preset: str = ""
    """A named recipe from rlbase/presets/<algo>.yaml `recipes:` (e.g. dqn's rainbow), applied over the
    env's preset, under --config and your flags (the recipes are listed at the end of this help)."""
    total_timesteps: int = 100_000
    """Environment steps to train for (summed over all parallel envs)."""
    num_envs: int = 1
    """Parallel environments stepped together; actions for all of them come from one batched forward pass."""
    seed: int = 0
    """Seed for network initialisation, exploration and the environments."""
    device: str = "auto"
    """auto (CUDA when present, else CPU), cpu or cuda."""
    log_dir: str = "runs"
    """Folder under which the run directory is created."""
    run_name: str = ""
    """Name of the run directory (default: <env>__<algo>__<seed>__<date-time>)."""
    backbone: str = "auto"
    """Feature extractor: auto (nature_cnn for images, impala_cnn for small grids, mlp for vectors, text
    for token ids, one per key for Dict observations, film_cnn for an image next to an instruction), mlp,
    nature_cnn, impala_cnn, resnet, vit, film_cnn or text; for Dict observations also KEY=NAME,...
    (e.g. image=resnet,mission=text)."""
    backbone_weights: str = ""
    """Start the backbone from a pretrained artifact (a directory written by `rlbase pretrain`); for
    Dict observations KEY=DIR,... or one DIR (given to the key whose observations it was trained on)."""
    freeze_backbone: bool = False
    """Keep the backbone (the pretrained parts when --backbone-weights is given) fixed: train the heads only."""
    backbone_lr_scale: float = 1.0
    """Learning-rate multiplier for the pretrained backbone when fine-tuning it."""
    feature_norm: bool = False
    """A LayerNorm (trained, also when the backbone is frozen) between the backbone and the heads. Pretrained
    backbones give features of very different scales (measured on pixel mazes: RMS 0.23 after maze-action
    pretraining, 12 after maze-position); normalised, the heads start from the same footing whatever the
    backbone was trained on."""
    hidden_sizes: tuple[int, ...] = (256, 256)
    """Hidden layer widths of the mlp backbone."""
    backbone_width: float = 1.0
    """Width multiplier of the nature_cnn and impala_cnn backbones: their channels and features times
    this (parameters scale about as its square; `rlbase distill` sizes CNN students with it)."""
    activation: str = "relu"
    """Activation of the mlp backbone: relu or tanh."""
    log_interval: int = 10_000
    """Environment steps between logged points (TensorBoard, metrics.jsonl, progress bar values)."""
    checkpoint_interval: int = 100_000
    """Environment steps between periodic checkpoints (0: only the final one)."""
    save_buffer: bool = False
    """Also save the replay buffer with each checkpoint, so --resume continues with it."""
    compile: bool = False
    """Wrap the networks in torch.compile (eager mode is the tested default)."""
    torch_threads: int = 0
    """Torch intra-op threads while training (0: auto, 1 for an mlp backbone on CPU, whose small ops
    run faster on one thread than split over several; torch's default otherwise)."""
    check_env_values: bool = False
    """Check every observation and reward for NaN and infinity, and stop training at the first one
    with the step it came at (costs a few small device ops per step; see BENCHMARKS.md)."""
    time_stages: str = "auto"
    """Log each stage's share of the training loop's wall time at every log point (time/act, time/env,
    time/store, time/learn, time/log: fractions summing to 1): on, off, or auto (on for CPU, where timing
    a stage only reads the clock; off on CUDA, where a truthful split synchronises the device per stage)."""
    eval_freq: int = 0
    """Evaluate every this many environment steps during training, and at the end (0: never): the
    eval split, the evaluation policy, --eval-episodes episodes; logs eval/mean_reward and keeps the
    best checkpoint in best/ (`rlbase eval RUN --best`)."""
    eval_episodes: int = 10
    """Episodes per evaluation: of --eval-freq, and of `rlbase eval` when --episodes is not given."""
    eval_epsilon: float = 0.0
    """Exploration rate used by `rlbase eval` (Atari preset: 0.05)."""
    # The Atari settings: names and defaults are rlbase.envs.atari's (GAME_OPTIONS, TRAINING_OPTIONS).
    sticky_actions: float = atari.GAME_OPTIONS["sticky_actions"]
    """Atari only: probability of repeating the previous action (v5 default 0.25)."""
    frame_stack: int = atari.GAME_OPTIONS["frame_stack"]
    """Atari only: number of stacked 84x84 grey frames."""
    noop_max: int = atari.GAME_OPTIONS["noop_max"]
    """Atari only: up to this many no-op actions at the start of each game."""
    atari_max_episode_steps: int = atari.GAME_OPTIONS["atari_max_episode_steps"]
    """Atari only: agent steps (of 4 frames) after which a game is truncated (108,000 frames). rlbase's
    own envs take their time limit from --env-kwargs max_episode_steps=N."""
    clip_rewards: bool = atari.TRAINING_OPTIONS["clip_rewards"]
    """Atari only: train on sign-clipped rewards (logged returns are always the real score)."""
    terminal_on_life_loss: bool = atari.TRAINING_OPTIONS["terminal_on_life_loss"]
    """Atari only: treat a lost life as terminal in training targets (episodes are still full games)."""


FLAG_NAMES = {"env_id": "--env"}


RENAMED_FIELDS = {"max_episode_steps": "atari_max_episode_steps"}
"""Old field name -> new one: config.json files of older runs still load (`saved_values`)."""


def saved_config(algo: Any, values: dict[str, Any], source: str) -> tuple[Any, Any]:
    """(agent, config) of a config rlbase saved (config.json, state.json, an artifact's metadata),
    checked like user input: an unknown algo, a field of the wrong type or an invalid value is an
    RlbaseError naming `source` (the file), not a flag."""
    from rlbase.agents import ALGORITHMS, get_agent
    from rlbase.errors import RlbaseError

    if not isinstance(algo, str) or algo not in ALGORITHMS:
        raise RlbaseError(f"{source}: unknown algo {algo!r}")
    agent = get_agent(algo)
    cfg = from_dict(agent.Config, saved_values(values), source)
    try:
        agent.validate(cfg)
    except UsageError as exc:
        raise RlbaseError(f"{source}: {str(exc).replace('invalid --', 'invalid ')}") from None
    return agent, cfg


def saved_values(values: dict[str, Any]) -> dict[str, Any]:
    """A saved config (a run's config.json, a checkpoint's state.json) in today's field names. Only
    files rlbase wrote get this: flags, --config files and the Python API take today's names."""
    return {RENAMED_FIELDS.get(key, key): value for key, value in values.items()}


def env_options(cfg: CommonConfig, training: bool = True) -> dict[str, Any]:
    """The config's environment settings, as keyword arguments of `rlbase.envs.make_vec_env`."""
    names = [*atari.GAME_OPTIONS, *(atari.TRAINING_OPTIONS if training else ())]  # evaluation: real, unclipped games
    options: dict[str, Any] = {name: getattr(cfg, name) for name in names}
    options["env_kwargs"] = dict(cfg.env_kwargs)
    options["split"] = "train" if training else "eval"  # procedural envs evaluate on unseen levels
    return options


def flag_name(field_name: str) -> str:
    return FLAG_NAMES.get(field_name, "--" + field_name.replace("_", "-"))


def field_docs(cls: type) -> dict[str, str]:
    """Read the docstring written under each dataclass field (the CleanRL/tyro convention)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        body = _class_body(klass)
        for node, nxt in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _class_body(klass: type) -> list[ast.stmt]:
    """The statements of a module-level class, from its module's source. (`inspect.getsource` would
    do, but it parses the whole module again for every class: ~80 ms of `rlbase train`'s start-up.)"""
    tree = _module_tree(getattr(sys.modules.get(klass.__module__), "__file__", None))
    for node in tree.body if tree is not None else ():
        if isinstance(node, ast.ClassDef) and node.name == klass.__qualname__:
            return node.body
    return []


@functools.lru_cache(maxsize=None)
def _module_tree(filename: str | None) -> ast.Module | None:
    try:
        return ast.parse(Path(filename).read_text()) if filename else None
    except (OSError, SyntaxError, UnicodeDecodeError):
        return None


def _parse_value(type_: Any, text: str, flag: str) -> Any:
    try:
        if type_ is int:
            return int(text.replace("_", ""))  # 1_000_000 and 1e6 style are both common
        if type_ is float:
            return float(text)
        if type_ == tuple[int, ...]:
            return tuple(int(x) for x in text.split(",") if x.strip())
        if type_ == tuple[str, ...]:
            return tuple(x.strip() for x in text.split(",") if x.strip())
        if type_ == dict[str, Any]:
            return parse_kwargs(text)
    except ValueError:
        kinds = {int: "an integer", float: "a number", dict[str, Any]: "KEY=VALUE pairs separated by commas"}
        kind = kinds.get(type_, "a comma-separated list of integers")
        raise UsageError(f"{flag} expects {kind}, got {text!r}") from None
    return text


def read_mapping_file(path: str | Path, flag: str, what: str) -> dict[str, Any]:
    """The mapping in a YAML or JSON file (`--config`, `--space`); a one-line UsageError naming `flag`
    for a missing or unreadable file or anything but a mapping (`what` says what it maps)."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise UsageError(f"{flag} {path}: no such file") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise UsageError(f"{flag} {path}: not readable YAML/JSON ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{flag} {path}: expected a mapping of {what}")
    return data


def parse_kwargs(text: str) -> dict[str, Any]:
    """`KEY=VALUE,KEY=VALUE` -> dict; values are read as YAML scalars (15 -> int, true -> bool, pixels -> str)."""
    import yaml

    out: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise ValueError(item)
        try:
            out[key.strip()] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            raise ValueError(item) from None
    return out


def _int_or_float_int(text: str) -> str:
    # Accept `1e6` for integer step counts: users type it all the time.
    try:
        value = float(text)
    except ValueError:
        return text
    return str(int(value)) if value.is_integer() and "e" in text.lower() else text


class _Store(argparse.Action):
    """Store a parsed value and remember that the user gave it (defaults come from presets)."""

    def __init__(self, *args, field_type: Any = str, **kwargs):
        self.field_type = field_type
        super().__init__(*args, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        text = _int_or_float_int(values) if self.field_type is int else values
        setattr(namespace, self.dest, _parse_value(self.field_type, text, option_string or self.dest))


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """Add one flag per field of `cls`, with its docstring and default in the help text.

    Flags default to argparse.SUPPRESS so the namespace holds only what the user typed.
    """
    docs = field_docs(cls)
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = flag_name(f.name)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        if isinstance(default, tuple):
            shown = ",".join(map(str, default))
        elif isinstance(default, dict):
            shown = ",".join(f"{k}={v}" for k, v in default.items()) or "none"
        else:
            shown = default
        help_text = f"{docs.get(f.name, '')} (default: {shown if shown != '' else 'none'})".replace("%", "%%")
        type_ = hints[f.name]
        if type_ is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=help_text)
        else:
            metavar = {int: "INT", float: "FLOAT", str: "STR", dict[str, Any]: "KEY=VALUE,...",
                       tuple[str, ...]: "NAMES"}.get(type_, "INTS")
            parser.add_argument(flag, dest=f.name, action=_Store, field_type=type_, metavar=metavar,
                                default=argparse.SUPPRESS, help=help_text)


def from_dict(cls: type, values: dict[str, Any], source: str) -> Any:
    """Build `cls` from a dict, rejecting unknown keys and coercing list -> tuple."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise UsageError(f"{source}: unknown option(s) {', '.join(unknown)}")
    hints = get_type_hints(cls)
    return cls(**{key: _typed(value, hints[key], key, source) for key, value in values.items()})


_KINDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
          tuple[int, ...]: "a list of integers", tuple[str, ...]: "a list of strings",
          dict[str, Any]: "an object of KEY: VALUE"}


def _typed(value: Any, type_: Any, key: str, source: str) -> Any:
    """`value` as field `key` of type `type_` wants it (a list becomes a tuple, an integer a float);
    a one-line UsageError naming `source` and the field for a value of the wrong type (a config
    file or a run's config.json is input: `hidden_sizes: "abc"` must not reach a network)."""
    ok = False
    if type_ is bool:
        ok = isinstance(value, bool)
    elif type_ is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif type_ is float:
        if isinstance(value, str):  # YAML reads 1e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif type_ is str:
        ok = isinstance(value, str)
    elif type_ in (tuple[int, ...], tuple[str, ...]):
        item = int if type_ == tuple[int, ...] else str
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, item) and not isinstance(v, bool) for v in value)
        value = tuple(value) if ok else value
    elif type_ == dict[str, Any]:
        ok = isinstance(value, dict) and all(isinstance(k, str) for k in value)
    else:
        ok = True
    if not ok:
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        raise UsageError(f"{source}: field {key} must be {_KINDS.get(type_, type_)}, got {shown}")
    return value


def resolve_config(cls: type, algo: str, values: dict[str, Any], observations: str | None = None) -> Any:
    """Defaults < preset (env family, env id, and the env's `observations` kind when given) < the
    recipe `values["preset"]` names < `values` (the user's: command-line flags, a --config file or
    keyword arguments)."""
    env_id = values.get("env_id", "")
    recipe = values.get("preset", "")
    recipe = recipe if isinstance(recipe, str) else ""  # a wrong type is from_dict's one-line error
    merged = load_preset(algo, env_id, observations, recipe) if env_id else recipe_values(algo, "", recipe)
    merged.update(values)
    return from_dict(cls, merged, f"{algo} config")


def make_env(cfg: CommonConfig, num_envs: int, device: Any, *, training: bool = True, render: bool = False) -> Any:
    """The config's env (`rlbase.envs.make_vec_env`): its id, packages, env keyword arguments and
    Atari settings; `training=False` gives the eval split with full, unclipped episodes."""
    from rlbase.envs import make_vec_env

    halves = training and not render and bool(getattr(cfg, "split_envs", False))  # the on-policy agents' --split-envs
    return make_vec_env(cfg.env_id, num_envs, device, render=render, gym_packages=tuple(cfg.gym_packages),
                        halves=halves, **env_options(cfg, training))


def to_json(config: Any) -> str:
    return json.dumps(dataclasses.asdict(config), indent=2, sort_keys=True)


def training_threads(cfg: CommonConfig, backbone: str, device_type: str) -> int:
    """Intra-op threads for a run: --torch-threads, else 1 for an mlp on CPU, else torch's current count."""
    import torch

    if cfg.torch_threads:
        return cfg.torch_threads
    return 1 if backbone == "mlp" and device_type == "cpu" else torch.get_num_threads()


BACKBONE_NAMES = ("mlp", "nature_cnn", "impala_cnn", "resnet", "vit", "film_cnn", "text")
"""The names of `rlbase.backbones.BACKBONES`, here so that validating a config needs no torch (a test keeps
them equal)."""
ACTIVATION_NAMES = ("relu", "tanh")
"""The names of `rlbase.backbones.ACTIVATIONS`, likewise."""


def check(condition: bool, field_name: str, message: str) -> None:
    """Raise a UsageError naming the flag when `condition` is false."""
    if not condition:
        raise UsageError(f"invalid {flag_name(field_name)}: {message}")


def validate_common(cfg: CommonConfig) -> None:
    for f in dataclasses.fields(cfg):  # no option takes NaN or infinity (--learning-rate inf, --adam-eps nan)
        value = getattr(cfg, f.name)
        check(not isinstance(value, float) or math.isfinite(value), f.name, f"must be a finite number, got {value}")
    try:  # saved in config.json and every checkpoint: JSON values only, and no NaN or infinity
        json.dumps(cfg.env_kwargs, allow_nan=False)
    except (TypeError, ValueError):
        check(False, "env_kwargs", f"values must be finite numbers, strings, lists or objects, got {cfg.env_kwargs}")
    check(bool(cfg.env_id), "env_id", "an environment id is required, e.g. --env CartPole-v1")
    check(0 <= cfg.seed < 2**32, "seed", f"must be in [0, 2**32), got {cfg.seed}")
    check(cfg.run_name == "" or (Path(cfg.run_name).name == cfg.run_name and cfg.run_name not in (".", "..")
                                 and "\\" not in cfg.run_name), "run_name",
          f"must be a folder name, not a path, got {cfg.run_name!r}")
    check(cfg.total_timesteps > 0, "total_timesteps", f"must be positive, got {cfg.total_timesteps}")
    check(cfg.num_envs > 0, "num_envs", f"must be positive, got {cfg.num_envs}")
    check(cfg.log_interval > 0, "log_interval", f"must be positive, got {cfg.log_interval}")
    check(cfg.checkpoint_interval >= 0, "checkpoint_interval", f"must be >= 0, got {cfg.checkpoint_interval}")
    check(cfg.torch_threads >= 0, "torch_threads", f"must be >= 0, got {cfg.torch_threads}")
    check(cfg.time_stages in ("auto", "on", "off"), "time_stages", f"use auto, on or off, got {cfg.time_stages!r}")
    check(cfg.eval_episodes > 0, "eval_episodes", f"must be positive, got {cfg.eval_episodes}")
    check(cfg.eval_freq >= 0, "eval_freq", f"must be >= 0 (0: no evaluation during training), got {cfg.eval_freq}")
    check(0.0 <= cfg.eval_epsilon <= 1.0, "eval_epsilon", f"must be in [0, 1], got {cfg.eval_epsilon}")
    check(0.0 <= cfg.sticky_actions <= 1.0, "sticky_actions", f"must be in [0, 1], got {cfg.sticky_actions}")
    check(cfg.frame_stack > 0, "frame_stack", f"must be positive, got {cfg.frame_stack}")
    check(cfg.noop_max >= 0, "noop_max", f"must be >= 0, got {cfg.noop_max}")
    check(cfg.atari_max_episode_steps > 0, "atari_max_episode_steps",
          f"must be positive, got {cfg.atari_max_episode_steps}")
    check(len(cfg.hidden_sizes) > 0 and all(h > 0 for h in cfg.hidden_sizes), "hidden_sizes",
          f"must be positive integers, got {cfg.hidden_sizes}")
    check(cfg.activation in ACTIVATION_NAMES, "activation",
          f"choose from {', '.join(ACTIVATION_NAMES)}, got {cfg.activation!r}")
    check(cfg.backbone == "auto" or cfg.backbone in BACKBONE_NAMES or "=" in cfg.backbone, "backbone",
          f"unknown backbone {cfg.backbone!r}; choose from auto, {', '.join(BACKBONE_NAMES)}")
    check(cfg.backbone_lr_scale >= 0, "backbone_lr_scale", f"must be >= 0, got {cfg.backbone_lr_scale}")
    check(0 < cfg.backbone_width <= 16, "backbone_width", f"must be in (0, 16], got {cfg.backbone_width}")
    check(cfg.device == "auto" or cfg.device.split(":")[0] in ("cpu", "cuda"), "device",
          f"use auto, cpu or cuda, got {cfg.device!r}")

