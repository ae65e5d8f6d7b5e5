"""Backbone artifacts: a trained backbone as a directory that can be shared and reused.

    backbone.safetensors  the state_dict (safetensors: loading it runs no code)
    backbone.json         {"format": "rlbase-backbone", "version": 1, "name", "hidden_sizes",
                           "activation", "observation_space", "out_dim", "task", "metrics"}, and
                           where known "data" (how `rlbase pretrain` generated its data: task,
                           env_kwargs, seed, train_samples, val_samples; the held-out split is
                           rebuilt from it), "head" ({"outputs": N}: the task head kept beside the
                           backbone) and, for the int8 artifacts of `rlbase quantize`,
                           "quantization" (the int8 layers, see below)
    head.safetensors      the task head's state_dict (a `rlbase.pretrain.TaskHead`), when kept
    vocab.json            the Tokenizer, for a backbone that reads text

The task head is what held-out accuracy is measured with and what `rlbase distill` learns from;
agents never load it (`--backbone-weights` takes the backbone alone).

An int8 artifact (`rlbase quantize ARTIFACT`) stores its quantized layers as int8 weights with
their scales (the tensors of `rlbase.quantize_layers.artifact_tensors`; layer names in
"quantization" are those of backbone + head, prefixed `backbone.` / `head.`). Loading its backbone
as fp32 (`load_backbone`, `--backbone-weights`) dequantizes those weights: the values the int8
network computes with, exactly. Agents take it frozen only (`--freeze-backbone`): fine-tuning would
move the weights off their int8 grid, so fine-tune the fp32 artifact it came from instead.

Nothing here ever unpickles: a pickle or torch.save file handed over in place of an artifact
is refused with a UsageError, like a missing or corrupt one. A directory is written next to its
target and renamed into place, so a crash never leaves a half-written artifact.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

import gymnasium as gym
import numpy as np
import torch

from rlbase.backbones import Backbone, build_backbone, input_scale, is_token_space, resolve_backbone_name
from rlbase.backbones.text import TextEncoder
from rlbase.backbones.vision import MLP
from rlbase.errors import UsageError
from rlbase.safefiles import (PICKLED, atomic_write_text, fsync_path, load_safetensors, safetensors_problem,
                              save_safetensors)
from rlbase.tokenizer import Tokenizer

FORMAT = "rlbase-backbone"
VERSION = 1
WEIGHTS, SPEC, VOCAB, HEAD = "backbone.safetensors", "backbone.json", "vocab.json", "head.safetensors"


def artifact_root(path: str | Path) -> Path:
    """The artifact folder of `path`: the folder itself, or the `backbone/` folder of a
    `rlbase pretrain` run directory."""
    root = Path(path)
    if root.is_dir() and not (root / SPEC).exists() and (root / "backbone" / SPEC).exists():
        return root / "backbone"
    return root


# --- observation spaces as JSON ---------------------------------------------------------------

def describe_space(space: gym.spaces.Space) -> dict[str, Any]:
    """JSON for a Box ({"shape", "dtype", "low", "high"}, bounds as their min and max) or a Dict of Boxes
    ({"spaces": {key: box}}). Backbones depend only on the shape, the dtype and the largest high."""
    if isinstance(space, gym.spaces.Dict):
        return {"spaces": {key: describe_space(space[key]) for key in sorted(space.keys())}}
    if not isinstance(space, gym.spaces.Box):
        raise UsageError(f"backbones take Box or Dict observations, got {type(space).__name__}")
    return {"shape": list(space.shape), "dtype": np.dtype(space.dtype).name,
            "low": float(np.min(space.low)), "high": float(np.max(space.high))}


def space_from_description(desc: Any) -> gym.spaces.Space:
    """The space `describe_space` wrote (bounds as scalars); ValueError when the JSON is malformed."""
    if not isinstance(desc, dict):
        raise ValueError("observation_space must be an object")
    if "spaces" in desc:
        if not isinstance(desc["spaces"], dict) or not desc["spaces"]:
            raise ValueError("observation_space.spaces must be a non-empty object")
        return gym.spaces.Dict({key: space_from_description(sub) for key, sub in desc["spaces"].items()})
    shape, dtype = desc.get("shape"), desc.get("dtype")
    if not isinstance(shape, list) or not all(isinstance(n, int) and n > 0 for n in shape):
        raise ValueError("observation_space.shape must be a list of positive integers")
    if not isinstance(dtype, str):
        raise ValueError("observation_space.dtype must be a string")
    low, high = desc.get("low"), desc.get("high")
    if not isinstance(low, (int, float)) or not isinstance(high, (int, float)):
        raise ValueError("observation_space.low and .high must be numbers")
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):  # integer bounds stay exact (token ids, pixel values)
        low, high = int(low), int(high)
    return gym.spaces.Box(low, high, tuple(shape), dtype)


def _space_text(space: gym.spaces.Box) -> str:
    """"(3, 11, 11) uint8 in [0, 1]" or "(16,) int64 token ids, vocabulary 30"."""
    desc = describe_space(space)
    if is_token_space(space):
        return f"{tuple(space.shape)} {desc['dtype']} token ids, vocabulary {int(desc['high']) + 1}"
    return f"{tuple(space.shape)} {desc['dtype']} in [{desc['low']:g}, {desc['high']:g}]"


def check_space(path: Path, stored: gym.spaces.Space, given: gym.spaces.Space, key: str | None = None) -> None:
    """UsageError unless `given` feeds the saved backbone exactly like `stored` did: the same shape and
    dtype, the same pixel scaling, and for token ids the same vocabulary."""
    where = f" (observation key {key!r})" if key else ""
    if isinstance(stored, gym.spaces.Dict) or isinstance(given, gym.spaces.Dict):
        stored_keys = sorted(stored.keys()) if isinstance(stored, gym.spaces.Dict) else None
        given_keys = sorted(given.keys()) if isinstance(given, gym.spaces.Dict) else None
        if stored_keys != given_keys:
            raise UsageError(f"{path}: the backbone was saved for observation keys {stored_keys}, "
                             f"but these observations have keys {given_keys}")
        for sub in stored_keys:
            check_space(path, stored[sub], given[sub], sub)
        return
    if not isinstance(given, gym.spaces.Box):
        raise UsageError(f"{path}: the backbone takes {_space_text(stored)}{where}, got {type(given).__name__}")
    same = (stored.shape == given.shape and stored.dtype == given.dtype
            and input_scale(stored) == input_scale(given) and is_token_space(stored) == is_token_space(given))
    if same and is_token_space(stored):
        same = int(np.max(stored.high)) == int(np.max(given.high))
    if not same:
        raise UsageError(f"{path}: the backbone was saved for observations {_space_text(stored)}{where}, "
                         f"but these observations are {_space_text(given)}")


# --- writing ----------------------------------------------------------------------------------

def _text_encoders(backbone: Backbone) -> list[TextEncoder]:
    return [m for m in backbone.modules() if isinstance(m, TextEncoder)]


def save_backbone(path: str | Path, backbone: Backbone, name: str, observation_space: gym.spaces.Space,
                  hidden_sizes: tuple[int, ...], activation: str, task: str | None = None,
                  metrics: Mapping[str, Any] | None = None, tokenizer: Tokenizer | None = None,
                  head: torch.nn.Module | None = None, data: Mapping[str, Any] | None = None,
                  extra: Mapping[str, Any] | None = None) -> Path:
    """Write `backbone` as an artifact directory at `path`, replacing an earlier artifact there.

    `name` is resolved against `observation_space` (`auto` becomes the concrete name, a Dict gets
    its full per-key spec). `tokenizer` goes with a backbone that reads text; its ids must fit the
    encoder's vocabulary. `head` (a `TaskHead`) is kept in head.safetensors, `data` describes the
    pretraining data, `extra` adds fields to backbone.json (e.g. where a distilled one came from).
    Returns the directory.
    """
    spec = backbone_spec(backbone, name, observation_space, hidden_sizes, activation, task, metrics, tokenizer, data)
    if head is not None:
        spec["head"] = {"outputs": int(head_outputs(head))}
    spec.update(extra or {})
    return write_artifact(path, spec, backbone.state_dict(), head.state_dict() if head is not None else None,
                          tokenizer)


def head_outputs(head: torch.nn.Module) -> int:
    """Outputs of a task head: the width of its last Linear layer."""
    last = [m for m in head.modules() if isinstance(m, torch.nn.Linear)][-1]
    return last.out_features


def backbone_spec(backbone: Backbone, name: str, observation_space: gym.spaces.Space, hidden_sizes: tuple[int, ...],
                  activation: str, task: str | None = None, metrics: Mapping[str, Any] | None = None,
                  tokenizer: Tokenizer | None = None, data: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The backbone.json of `backbone` (checked: the tokenizer fits a text encoder)."""
    resolved = resolve_backbone_name(name, observation_space)
    encoders = _text_encoders(backbone)
    if tokenizer is not None:
        if not encoders:
            raise UsageError(f"a tokenizer goes with a backbone that reads text, not with {resolved!r}")
        too_small = [e.vocab_size for e in encoders if e.vocab_size < tokenizer.vocab_size]
        if too_small:
            raise UsageError(f"the tokenizer has {tokenizer.vocab_size} words, but the text encoder's "
                             f"vocabulary holds {too_small[0]}")
    spec = {
        "format": FORMAT, "version": VERSION, "name": resolved,
        "hidden_sizes": [int(h) for h in hidden_sizes], "activation": activation,
        "observation_space": describe_space(observation_space), "out_dim": int(backbone.out_dim),
        "task": task, "metrics": dict(metrics or {}),
    }
    if data is not None:
        spec["data"] = dict(data)
    return spec


def write_artifact(path: str | Path, spec: Mapping[str, Any], tensors: Mapping[str, torch.Tensor],
                   head_tensors: Mapping[str, torch.Tensor] | None = None, tokenizer: Tokenizer | None = None) -> Path:
    """Write an artifact directory at `path` from its backbone.json `spec` and tensors (staged beside
    it and renamed into place), replacing an earlier artifact there but nothing else."""
    target = Path(path)
    if target.exists() and not (target.is_dir() and ((target / SPEC).is_file() or not any(target.iterdir()))):
        # Never delete something that is not an artifact (a results folder given by mistake).
        raise UsageError(f"{target} exists and is not a backbone artifact; choose another path")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        for file, part in ((WEIGHTS, tensors), (HEAD, head_tensors)):
            if part is not None:
                save_safetensors({key: value.detach().to("cpu").contiguous() for key, value in part.items()},
                                 staging / file)
        # numpy and torch scalars in metrics become plain floats.
        atomic_write_text(staging / SPEC, json.dumps(spec, indent=1, default=float))
        if tokenizer is not None:
            tokenizer.save(staging / VOCAB)
        _swap_into_place(staging, target)
        fsync_path(target.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _swap_into_place(staging: Path, target: Path) -> None:
    """Rename `staging` to `target`; an existing `target` is moved aside first and restored on failure."""
    if not target.exists():
        os.replace(staging, target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
    os.replace(target, old / "artifact")  # POSIX renames a directory only onto a missing or empty one
    try:
        os.replace(staging, target)
    except BaseException:
        os.replace(old / "artifact", target)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


# --- reading ----------------------------------------------------------------------------------

def load_backbone_spec(path: str | Path) -> dict[str, Any]:
    """The validated backbone.json of the artifact at `path`; a one-line UsageError when it is not one."""
    root = artifact_root(path)
    if not root.exists():
        raise UsageError(f"{root}: no such backbone directory")
    if not root.is_dir():
        if safetensors_problem(root) == PICKLED:
            raise UsageError(f"{root} is a pickle (torch.save) file; rlbase never unpickles: "
                             f"pass a backbone directory ({WEIGHTS} + {SPEC})")
        raise UsageError(f"{root} is a file, not a backbone directory ({WEIGHTS} + {SPEC})")
    if not (root / SPEC).is_file():
        raise UsageError(f"{root}: missing {SPEC}; not a backbone artifact")
    try:
        spec = json.loads((root / SPEC).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UsageError(f"{root / SPEC}: corrupt JSON ({str(err).splitlines()[0]})") from None
    if not isinstance(spec, dict) or spec.get("format") != FORMAT:
        raise UsageError(f"{root / SPEC}: not an rlbase backbone (format must be {FORMAT!r})")
    if spec.get("version") != VERSION:
        raise UsageError(f"{root / SPEC}: backbone format version {spec.get('version')!r}; "
                         f"this rlbase reads version {VERSION}")
    try:
        _validate_fields(spec)
    except ValueError as err:
        raise UsageError(f"{root / SPEC}: corrupt backbone spec ({err})") from None
    return spec


def _validate_fields(spec: dict[str, Any]) -> None:
    if not isinstance(spec.get("name"), str) or not spec["name"]:
        raise ValueError("name must be a non-empty string")
    sizes = spec.get("hidden_sizes")
    if not isinstance(sizes, list) or not all(isinstance(h, int) and h > 0 for h in sizes):
        raise ValueError("hidden_sizes must be a list of positive integers")
    if not isinstance(spec.get("activation"), str):
        raise ValueError("activation must be a string")
    if not isinstance(spec.get("out_dim"), int) or spec["out_dim"] <= 0:
        raise ValueError("out_dim must be a positive integer")
    if spec.get("task") is not None and not isinstance(spec["task"], str):
        raise ValueError("task must be a string or null")
    if not isinstance(spec.get("metrics", {}), dict):
        raise ValueError("metrics must be an object")
    try:
        space_from_description(spec.get("observation_space"))
    except (TypeError, ValueError, OverflowError) as err:  # np.dtype("nonsense") is a TypeError
        raise ValueError(str(err).splitlines()[0]) from None
    head = spec.get("head")
    if head is not None and not (isinstance(head, dict) and _positive_int(head.get("outputs"))):
        raise ValueError("head must be an object with a positive integer outputs")
    data = spec.get("data")
    if data is not None and not (isinstance(data, dict) and isinstance(data.get("task"), str)
                                 and isinstance(data.get("env_kwargs", {}), dict)
                                 and all(_positive_int(data.get(k)) for k in ("train_samples", "val_samples"))
                                 and _positive_int(data.get("seed", 0), low=0)):
        raise ValueError("data must be an object with task, env_kwargs, seed, train_samples and val_samples")
    quantization = spec.get("quantization")
    if quantization is not None:
        if not isinstance(quantization, dict):
            raise ValueError("quantization must be an object")
        for field in ("layers", "conv_layers"):
            names = quantization.get(field)
            if not isinstance(names, list) or not all(isinstance(n, str) and n.startswith(("backbone.", "head."))
                                                      for n in names):
                raise ValueError(f"quantization.{field} must be a list of layer names (backbone.* or head.*)")


def _positive_int(value: Any, low: int = 1) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def quantized_layers(spec: Mapping[str, Any], part: str) -> tuple[list[str], list[str]]:
    """The int8 (Linear, Conv2d) layers of an artifact's `part` ("backbone" or "head"), named within
    that part; empty for an fp32 artifact."""
    quantization = spec.get("quantization") or {}
    prefix = f"{part}."
    return tuple([name[len(prefix):] for name in quantization.get(field, []) if name.startswith(prefix)]
                 for field in ("layers", "conv_layers"))


def read_tensors(root: Path, file: str = WEIGHTS) -> dict[str, torch.Tensor]:
    """The tensors of an artifact's file as stored (int8 weights and scales included), checked."""
    if not (root / file).is_file():
        raise UsageError(f"{root}: missing {file}")
    return load_safetensors(root / file, "cpu", error=UsageError)


def _read_weights(root: Path, spec: Mapping[str, Any] | None = None, file: str = WEIGHTS,
                  part: str = "backbone") -> dict[str, torch.Tensor]:
    """An fp32 state dict of the artifact's backbone (or head): an int8 artifact's weights dequantized."""
    tensors = read_tensors(root, file)
    layers, convs = quantized_layers(spec or {}, part)
    if not layers and not convs:
        return tensors
    from rlbase.quantize_layers import dequantized_state

    try:
        return dequantized_state(tensors, layers, convs)
    except KeyError as exc:
        raise UsageError(f"{root / file}: tensor {exc.args[0]} of an int8 layer is missing") from None
    except (ValueError, RuntimeError) as exc:
        raise UsageError(f"{root / file}: {str(exc).splitlines()[0]}") from None


def _load_state(root: Path, backbone: torch.nn.Module, name: str, spec: Mapping[str, Any] | None = None,
                file: str = WEIGHTS, part: str = "backbone") -> None:
    state = _read_weights(root, spec, file, part)
    own = backbone.state_dict()
    missing = [key for key in own if key not in state]
    unexpected = [key for key in state if key not in own]
    reshaped = [key for key in own if key in state and state[key].shape != own[key].shape]
    if missing or unexpected or reshaped:
        problems = [f"{len(keys)} {what} (first {keys[0]!r})" for what, keys in
                    (("missing tensors", missing), ("unexpected tensors", unexpected), ("shapes differ", reshaped))
                    if keys]
        raise UsageError(f"{root / file}: the weights do not fit {part} {name!r}: {'; '.join(problems)}")
    backbone.load_state_dict(state)


def load_backbone(path: str | Path, observation_space: gym.spaces.Space | None = None,
                  device: str | torch.device = "cpu") -> tuple[Backbone, dict[str, Any]]:
    """Build the saved backbone and load its weights: `(backbone, spec)`.

    With `observation_space`, the artifact must fit it (same shape, dtype, pixel scaling and, for
    token ids, vocabulary): a UsageError says what was expected and what was found.
    """
    root = artifact_root(path)
    spec = load_backbone_spec(root)
    stored = space_from_description(spec["observation_space"])
    if observation_space is not None:
        check_space(root, stored, observation_space)
    try:
        backbone = build_backbone(spec["name"], stored, tuple(spec["hidden_sizes"]), spec["activation"])
    except (UsageError, KeyError) as err:  # KeyError: an activation this rlbase does not know
        raise UsageError(f"{root / SPEC}: cannot build backbone {spec['name']!r} ({err})") from None
    if backbone.out_dim != spec["out_dim"]:
        raise UsageError(f"{root / SPEC}: backbone {spec['name']!r} gives {backbone.out_dim} features, "
                         f"but the artifact says {spec['out_dim']}")
    _load_state(root, backbone, spec["name"], spec)
    return backbone.to(device), spec


def load_backbone_weights(backbone: Backbone, path: str | Path, name: str,
                          observation_space: gym.spaces.Space) -> dict[str, Any]:
    """Load the artifact's weights into `backbone` (built as `name` for `observation_space`); returns the spec.

    The artifact must hold the same resolved backbone and fit the observations; mlp layers must use
    the saved activation. Otherwise a UsageError names what the artifact holds and what was asked.
    """
    root = artifact_root(path)
    spec = load_backbone_spec(root)
    resolved = resolve_backbone_name(name, observation_space)
    if resolved != spec["name"]:
        raise UsageError(f"{root} holds backbone {spec['name']!r}, but this run uses {resolved!r}")
    check_space(root, space_from_description(spec["observation_space"]), observation_space)
    activations = {m.activation for m in backbone.modules() if isinstance(m, MLP)}
    if activations - {spec["activation"]}:
        raise UsageError(f"{root} holds an mlp with activation {spec['activation']!r}, "
                         f"but this one uses {sorted(activations)[0]!r}")
    _load_state(root, backbone, resolved, spec)
    return spec


def load_head(path: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The artifact's task head (a `rlbase.pretrain.TaskHead`, weights dequantized for an int8 one);
    a one-line UsageError when the artifact kept none (written before `rlbase pretrain` kept heads)."""
    from rlbase.pretrain import TaskHead

    root = artifact_root(path)
    spec = load_backbone_spec(root)
    if spec.get("head") is None:
        raise UsageError(f"{root}: the artifact has no task head ({HEAD}; artifacts written before rlbase pretrain "
                         "kept heads have none): pretrain it again to measure or compress it")
    head = TaskHead(spec["out_dim"], spec["head"]["outputs"])
    _load_state(root, head, "task head", spec, HEAD, "head")
    return head.to(device)


def load_tokenizer(path: str | Path) -> Tokenizer | None:
    """The artifact's Tokenizer, or None when it has no vocab.json (a backbone that reads no text)."""
    file = artifact_root(path) / VOCAB
    if not artifact_root(path).is_dir():
        raise UsageError(f"{path}: no such backbone directory")
    if not file.is_file():
        return None
    try:
        return Tokenizer.load(file)
    except (OSError, UnicodeDecodeError, ValueError, TypeError) as err:  # JSONDecodeError is a ValueError
        raise UsageError(f"{file}: corrupt vocabulary ({str(err).splitlines()[0]})") from None
