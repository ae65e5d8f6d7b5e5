"""Backbone choice and transfer: `--backbone`, `--backbone-weights`, `--freeze-backbone` and
`--backbone-lr-scale`, parsed once into a `BackboneSpec`.

- `--backbone NAME` (or `KEY=NAME,...` for Dict observations) picks the feature extractor;
- `--backbone-weights DIR` (or `KEY=DIR,...`) starts it from pretrained artifacts (`rlbase pretrain`);
- `--freeze-backbone` keeps those backbones fixed (the agent trains only its heads);
- `--backbone-lr-scale X` fine-tunes them at X times the learning rate;
- `--feature-norm` puts a trained LayerNorm between the backbone and the heads (`FeatureNorm`).

`resolve` runs once per fresh run, before the run directory exists: it checks every artifact
against the env's observation space and writes the canonical names back into the config
(`auto` becomes the backbone it stands for, a bare DIR for a Dict space becomes `KEY=DIR`), so
the saved config rebuilds the same network without reading the artifacts again: evaluation and
resume read weights from the agent's checkpoint, never from the artifact. `parse` turns such a
config into a `BackboneSpec` without touching the file system. Agents then `build` the backbone,
`prepare` it (copy the artifact weights into fresh runs, freeze) and hand `parameter_groups` to
their optimiser.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
from torch import nn

from rlbase.errors import UsageError


@dataclass(frozen=True)
class BackboneSpec:
    """The feature extractor of a run, for one observation space."""

    name: str
    """Canonical name: a registry name for a Box space, the full per-key spec for a Dict space."""
    hidden_sizes: tuple[int, ...]
    """Widths of mlp backbones."""
    activation: str
    """Activation of mlp backbones."""
    width: float = 1.0
    """Width multiplier of the scalable CNNs (`rlbase.backbones.SCALABLE`)."""
    key_names: dict[str, str] = field(default_factory=dict, hash=False)
    """Backbone name per observation key of a Dict space ({} for a single backbone)."""
    weights: dict[str | None, str] = field(default_factory=dict, hash=False)
    """Artifact directory per observation key (None: the whole Box observation); empty: from scratch."""
    freeze: bool = False
    """Keep the pretrained parts (the whole backbone when there are no weights) fixed."""
    lr_scale: float = 1.0
    """Learning-rate multiplier of the pretrained parts when fine-tuned."""
    feature_norm: bool = False
    """Follow the backbone with a trained LayerNorm of its features (`FeatureNorm`)."""

    def build(self, space: gym.spaces.Space) -> nn.Module:
        """A freshly initialised backbone for `space` (wrapped in `FeatureNorm` with --feature-norm)."""
        from rlbase.backbones import build_backbone

        backbone = build_backbone(self.name, space, self.hidden_sizes, self.activation, width=self.width)
        return FeatureNorm(backbone) if self.feature_norm else backbone


class FeatureNorm(nn.Module):
    """A backbone followed by a LayerNorm of its features (`--feature-norm`): `inner` is the backbone
    (what --backbone-weights loads and --freeze-backbone freezes), `norm` is trained with the heads."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.out_dim = inner.out_dim
        self.norm = nn.LayerNorm(inner.out_dim)

    def forward(self, obs):
        return self.norm(self.inner(obs))


def _inner(backbone: nn.Module) -> nn.Module:
    return backbone.inner if isinstance(backbone, FeatureNorm) else backbone


def parse(cfg: Any, space: gym.spaces.Space, with_weights: bool = True) -> BackboneSpec:
    """The `BackboneSpec` of a config for `space` (UsageError when the backbone cannot take it);
    `with_weights=False` leaves the pretrained artifacts out (enough to rebuild the network).

    Reads no artifact, except for configs saved before weights were canonicalised (a bare DIR for
    a Dict space), whose key is found from the artifact's input space.
    """
    from rlbase.backbones import backbone_names, resolve_backbone_name

    if cfg.backbone_lr_scale < 0:
        raise UsageError(f"invalid --backbone-lr-scale: must be >= 0, got {cfg.backbone_lr_scale}")
    key_names = backbone_names(cfg.backbone, space) if isinstance(space, gym.spaces.Dict) else {}
    name = resolve_backbone_name(cfg.backbone, space)
    width = float(getattr(cfg, "backbone_width", 1.0))
    if width != 1.0:
        _check_width(cfg, list(key_names.values()) if key_names else [name])
    return BackboneSpec(name=name, hidden_sizes=tuple(cfg.hidden_sizes), activation=cfg.activation, width=width,
                        key_names=key_names,
                        weights=_weights_by_key(cfg, space) if with_weights else {},
                        freeze=cfg.freeze_backbone, lr_scale=cfg.backbone_lr_scale,
                        feature_norm=bool(getattr(cfg, "feature_norm", False)))


def _check_width(cfg: Any, names: list[str]) -> None:
    """UsageError unless --backbone-width has a scalable CNN to widen and no pretrained weights, whose
    widths are the artifact's."""
    from rlbase.backbones import SCALABLE

    if not any(name in SCALABLE for name in names):
        raise UsageError(f"--backbone-width {cfg.backbone_width:g} scales only {' and '.join(SCALABLE)}, but the "
                         f"backbone is {', '.join(names)}; use --hidden-sizes for an mlp")
    if (cfg.backbone_weights or "").strip():
        raise UsageError(f"--backbone-width {cfg.backbone_width:g} cannot change a pretrained backbone "
                         "(--backbone-weights): its widths are the artifact's")


def resolve(cfg: Any, space: gym.spaces.Space) -> tuple[Any, BackboneSpec]:
    """(`cfg` with canonical backbone names and weights, its spec), checking every artifact of
    --backbone-weights against `space`: a UsageError for a missing, corrupt or mismatched one.
    `auto` takes the artifact's backbone."""
    from rlbase.backbones import backbone_names
    from rlbase.backbones.artifact import load_backbone_spec
    from rlbase.backbones.multi import format_backbone_spec

    weights = _weights_by_key(cfg, space)
    backbone = cfg.backbone
    if weights and isinstance(space, gym.spaces.Dict):
        names = dict(backbone_names(cfg.backbone, space))
        explicit = set() if cfg.backbone == "auto" else set(_explicit_keys(cfg.backbone, names))
        for key, path in weights.items():
            names[key] = _artifact_name(load_backbone_spec(path), path, names[key] if key in explicit else "auto",
                                        cfg, space.spaces[key], key)
        backbone = format_backbone_spec(names)
    elif weights:
        backbone = _artifact_name(load_backbone_spec(weights[None]), weights[None], cfg.backbone, cfg, space, None)
    canonical = ",".join(f"{key}={path}" for key, path in sorted(weights.items())) if None not in weights else (
        weights[None])
    cfg = dataclasses.replace(cfg, backbone=backbone, backbone_weights=canonical if weights else "")
    spec = parse(cfg, space)
    return dataclasses.replace(cfg, backbone=spec.name), spec


def _weights_by_key(cfg: Any, space: gym.spaces.Space) -> dict[str | None, str]:
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
    if spec.get("quantization") is not None and not cfg.freeze_backbone:
        # its weights are int8 values dequantized: fine-tuning would move them off that grid
        raise UsageError(f"--backbone-weights {path} is an int8 artifact (rlbase quantize): agents take it frozen; add "
                         f"--freeze-backbone, or fine-tune the fp32 artifact it came from")
    if wanted not in ("auto", spec["name"]):
        raise UsageError(f"--backbone {wanted}{where} does not match the pretrained backbone in {path} ({spec['name']})")
    if spec["name"] == "mlp" and (tuple(spec.get("hidden_sizes") or ()) != tuple(cfg.hidden_sizes)
                                  or spec.get("activation") != cfg.activation):
        raise UsageError(f"--backbone-weights {path}: the pretrained mlp has hidden sizes "
                         f"{','.join(map(str, spec.get('hidden_sizes') or ()))} and {spec.get('activation')}; pass "
                         f"--hidden-sizes and --activation to match")
    return spec["name"]


def pretrained_parts(spec: BackboneSpec, backbone: nn.Module) -> list[nn.Module]:
    """The modules of `backbone` that --backbone-weights initialises (all of it when no weights are
    named: --freeze-backbone then freezes the randomly initialised backbone, a common baseline); never
    the LayerNorm of --feature-norm."""
    backbone = _inner(backbone)
    if not spec.weights or None in spec.weights:
        return [backbone]
    return [backbone.sub_backbones[key] for key in spec.weights]


def load(spec: BackboneSpec, backbone: nn.Module, space: gym.spaces.Space) -> None:
    """Copy the artifact weights of `spec` into `backbone` (built from the same spec)."""
    from rlbase.backbones.artifact import load_backbone_weights

    backbone = _inner(backbone)
    for key, path in spec.weights.items():
        if key is None:
            load_backbone_weights(backbone, path, spec.name, space)
        else:
            load_backbone_weights(backbone.sub_backbones[key], path, spec.key_names[key], space.spaces[key])


def prepare(spec: BackboneSpec, backbones: list[nn.Module], space: gym.spaces.Space, fresh: bool) -> list[nn.Module]:
    """Load (when `fresh`) and freeze the pretrained parts of each backbone; returns those parts."""
    parts: list[nn.Module] = []
    for backbone in backbones:
        if fresh:
            load(spec, backbone, space)
        parts += pretrained_parts(spec, backbone) if (spec.weights or spec.freeze) else []
    if spec.freeze:
        for part in parts:
            part.requires_grad_(False)
    return parts


def parameter_groups(model: nn.Module, parts: list[nn.Module], spec: BackboneSpec) -> list[dict[str, Any]]:
    """Optimiser groups: the model's trainable parameters, with the pretrained ones (when fine-tuned)
    in their own group at `lr_scale` = --backbone-lr-scale. Frozen parameters are left out."""
    pretrained = {id(p) for part in parts for p in part.parameters()}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in pretrained]
    groups = [{"params": rest, "lr_scale": 1.0}]
    tuned = [p for part in parts for p in part.parameters() if p.requires_grad]
    if tuned:
        seen: set[int] = set()
        unique = [p for p in tuned if not (id(p) in seen or seen.add(id(p)))]
        groups.append({"params": unique, "lr_scale": spec.lr_scale})
    return groups


def set_learning_rate(optimizer: Any, lr: float) -> None:
    """Set each group's lr to `lr` times its `lr_scale`."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
