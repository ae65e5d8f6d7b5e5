"""Transfer: start an agent's backbone from a pretrained artifact (`rlbase pretrain`), frozen or fine-tuned.

Three config options drive it (shared by every agent):

- `--backbone-weights DIR` (or `KEY=DIR,...` for Dict observations) names backbone artifacts;
- `--freeze-backbone` keeps those backbones fixed (the agent trains only its heads);
- `--backbone-lr-scale X` fine-tunes them at X times the learning rate.

`resolve` runs before a run directory exists: it checks every artifact against the env's
observation space and fills in the backbone name, so the saved config rebuilds the same network
(evaluation and resume read weights from the agent's checkpoint, never from the artifact).
`load` copies the artifact weights in (fresh runs only), and `parameter_groups` gives the
optimiser its groups: pretrained parameters with `lr_scale`, frozen ones left out.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import gymnasium as gym
from torch import nn

from rlbase.errors import UsageError


def weights_by_key(cfg: Any, space: gym.spaces.Space) -> dict[str | None, str]:
    """The artifacts of `cfg.backbone_weights`: {None: DIR} for a Box space, {key: DIR} for a Dict space.

    For a Dict space a single DIR (no `KEY=`) goes to the one key whose observations the artifact
    was trained on.
    """
    from rlbase.backbones.artifact import load_backbone_spec

    text = (cfg.backbone_weights or "").strip()
    if not text:
        return {}
    if not isinstance(space, gym.spaces.Dict):
        return {None: text}
    if "=" not in text:
        spec = load_backbone_spec(text)
        matches = [key for key, sub in space.spaces.items() if _same_space(spec, sub)]
        if len(matches) != 1:
            found = "no key" if not matches else f"keys {', '.join(matches)}"
            raise UsageError(f"--backbone-weights {text}: {found} of {cfg.env_id}'s observations match the artifact's "
                             f"input {tuple(spec['observation_space']['shape'])}; name the key as KEY=DIR")
        return {matches[0]: text}
    out: dict[str | None, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, path = item.partition("=")
        if not sep or key not in space.spaces:
            raise UsageError(f"--backbone-weights: {item!r} is not KEY=DIR with KEY one of {', '.join(space.spaces)}")
        out[key] = path
    return out


def _same_space(spec: dict[str, Any], space: gym.spaces.Space) -> bool:
    from rlbase.backbones.artifact import check_space, space_from_description

    try:
        check_space(Path("artifact"), space_from_description(spec["observation_space"]), space)
    except UsageError:
        return False
    return True


def resolve(cfg: Any, space: gym.spaces.Space) -> Any:
    """`cfg` with its backbone name made to match the artifacts of --backbone-weights (`auto` takes
    the artifact's name); a UsageError for a missing, corrupt or mismatched artifact."""
    from rlbase.backbones import backbone_names, check_backbone
    from rlbase.backbones.artifact import load_backbone_spec
    from rlbase.backbones.multi import format_backbone_spec

    weights = weights_by_key(cfg, space)
    if cfg.backbone_lr_scale < 0:
        raise UsageError(f"invalid --backbone-lr-scale: must be >= 0, got {cfg.backbone_lr_scale}")
    if not weights:
        return cfg
    if isinstance(space, gym.spaces.Dict):
        names = dict(backbone_names(cfg.backbone, space))
        explicit = set() if cfg.backbone == "auto" else set(_explicit_keys(cfg.backbone, names))
        for key, path in weights.items():
            names[key] = _artifact_name(load_backbone_spec(path), path, names[key] if key in explicit else "auto",
                                        cfg, space.spaces[key], key)
        backbone = format_backbone_spec(names)
    else:
        backbone = _artifact_name(load_backbone_spec(weights[None]), weights[None], cfg.backbone, cfg, space, None)
    cfg = dataclasses.replace(cfg, backbone=backbone)
    check_backbone(cfg.backbone, space)
    return cfg


def _explicit_keys(spec: str, names: dict[str, str]) -> list[str]:
    """Keys a Dict backbone spec names itself (`image=resnet` names `image`; a bare name names the keys it took)."""
    if "=" in spec:
        return [part.split("=", 1)[0].strip() for part in spec.split(",") if "=" in part]
    return [key for key, name in names.items() if name == spec]


def _artifact_name(spec: dict[str, Any], path: str, wanted: str, cfg: Any, space: gym.spaces.Space,
                   key: str | None) -> str:
    from rlbase.backbones.artifact import check_space, space_from_description

    where = f" for key {key!r}" if key else ""
    check_space(Path(path), space_from_description(spec["observation_space"]), space, key)
    if wanted not in ("auto", spec["name"]):
        raise UsageError(f"--backbone {wanted}{where} does not match the pretrained backbone in {path} ({spec['name']})")
    if spec["name"] == "mlp" and (tuple(spec.get("hidden_sizes") or ()) != tuple(cfg.hidden_sizes)
                                  or spec.get("activation") != cfg.activation):
        raise UsageError(f"--backbone-weights {path}: the pretrained mlp has hidden sizes "
                         f"{','.join(map(str, spec.get('hidden_sizes') or ()))} and {spec.get('activation')}; pass "
                         f"--hidden-sizes and --activation to match")
    return spec["name"]


def pretrained_parts(cfg: Any, backbone: nn.Module, space: gym.spaces.Space) -> list[nn.Module]:
    """The modules of `backbone` that --backbone-weights initialises (all of it when no weights are
    named: --freeze-backbone then freezes the randomly initialised backbone, a common baseline)."""
    weights = weights_by_key(cfg, space) if cfg.backbone_weights else {}
    if not weights or None in weights:
        return [backbone]
    return [backbone.sub_backbones[key] for key in weights]


def load(cfg: Any, backbone: nn.Module, space: gym.spaces.Space) -> None:
    """Copy the artifact weights of --backbone-weights into `backbone` (built from the resolved cfg)."""
    from rlbase.backbones import backbone_names
    from rlbase.backbones.artifact import load_backbone_weights

    for key, path in weights_by_key(cfg, space).items():
        if key is None:
            load_backbone_weights(backbone, path, cfg.backbone, space)
        else:
            name = backbone_names(cfg.backbone, space)[key]
            load_backbone_weights(backbone.sub_backbones[key], path, name, space.spaces[key])


def prepare(cfg: Any, backbones: list[nn.Module], space: gym.spaces.Space, fresh: bool) -> list[nn.Module]:
    """Load (when `fresh`) and freeze the pretrained parts of each backbone; returns those parts."""
    parts: list[nn.Module] = []
    for backbone in backbones:
        if fresh:
            load(cfg, backbone, space)
        parts += pretrained_parts(cfg, backbone, space) if (cfg.backbone_weights or cfg.freeze_backbone) else []
    if cfg.freeze_backbone:
        for part in parts:
            part.requires_grad_(False)
    return parts


def parameter_groups(model: nn.Module, parts: list[nn.Module], cfg: Any) -> list[dict[str, Any]]:
    """Optimiser groups: the model's trainable parameters, with the pretrained ones (when fine-tuned)
    in their own group at `lr_scale` = --backbone-lr-scale. Frozen parameters are left out."""
    pretrained = {id(p) for part in parts for p in part.parameters()}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in pretrained]
    groups = [{"params": rest, "lr_scale": 1.0}]
    tuned = [p for part in parts for p in part.parameters() if p.requires_grad]
    if tuned:
        seen: set[int] = set()
        unique = [p for p in tuned if not (id(p) in seen or seen.add(id(p)))]
        groups.append({"params": unique, "lr_scale": cfg.backbone_lr_scale})
    return groups


def set_learning_rate(optimizer: Any, lr: float) -> None:
    """Set each group's lr to `lr` times its `lr_scale`."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
