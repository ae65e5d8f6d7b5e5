"""Backbones: feature extractors built from an observation space, each exposing `out_dim`.

uint8 images are scaled to [0, 1] inside the module, on the device, so replay and rollout
storage can keep them as uint8. The modules live in `vision` (mlp, nature_cnn, impala_cnn,
resnet, vit), `text` (the token-id encoder) and `multi` (dict observations); this module is the
registry that picks and builds one by name, and `artifact` saves and loads trained ones.

Names: a registry name (`BACKBONES`), or `auto` for the default of the observation space. Dict
observations take `auto` (every key its default), one registry name (used for every key whose
observations it accepts, the others keep their default), or a per-key spec such as
"image=resnet,mission=text" (keys left out keep their default).
"""

from __future__ import annotations

from typing import Callable

import gymnasium as gym

from rlbase.backbones.multi import (MultiInputBackbone, format_backbone_spec, is_backbone_spec,
                                    parse_backbone_spec)
from rlbase.backbones.text import TextEncoder, is_token_space
from rlbase.backbones.vision import (ACTIVATIONS, MLP, Backbone, FiLMCNN, ImpalaCNN, NatureCNN, ResNet, ViT,
                                     input_scale)
from rlbase.errors import UsageError

__all__ = [
    "FiLMCNN",
    "ACTIVATIONS", "BACKBONES", "Backbone", "ImpalaCNN", "MLP", "MultiInputBackbone", "NatureCNN", "ResNet",
    "SCALABLE", "TextEncoder", "ViT", "backbone_names", "build_backbone", "check_backbone", "default_backbone",
    "input_scale", "is_grid_space", "is_image_space", "is_token_space", "observation_kind", "resolve_backbone_name",
]


def is_image_space(space: gym.spaces.Space) -> bool:
    """A (C, H, W) Box: Atari stacks, rendered frames."""
    return isinstance(space, gym.spaces.Box) and len(space.shape) == 3 and min(space.shape[1:]) >= 36


def is_grid_space(space: gym.spaces.Space) -> bool:
    """A (C, H, W) Box of any spatial size: images and small grids (maze observations)."""
    return isinstance(space, gym.spaces.Box) and len(space.shape) == 3


def _build_mlp(space: gym.spaces.Box, hidden_sizes: tuple[int, ...] = (256, 256), activation: str = "relu",
               layer_norm: bool = False, width: float = 1.0) -> MLP:
    return MLP(space, hidden_sizes, activation, layer_norm=layer_norm)


def _ignoring_sizes(cls: Callable[..., Backbone], normalizable: bool = False) -> Callable[..., Backbone]:
    """A builder for a backbone with fixed sizes: `hidden_sizes` and `activation` shape only the mlp;
    `layer_norm` and the width multiplier `width` reach the backbones that take them (`normalizable`:
    nature_cnn, impala_cnn; `SCALABLE`). The others have their own normalisation (resnet: GroupNorm;
    vit, text: LayerNorm) or none (film_cnn), and fixed widths."""
    if normalizable:
        return lambda space, hidden_sizes=None, activation=None, layer_norm=False, width=1.0: cls(
            space, layer_norm=layer_norm, width=width)
    return lambda space, hidden_sizes=None, activation=None, layer_norm=False, width=1.0: cls(space)


SCALABLE = ("nature_cnn", "impala_cnn")
"""Convolutional backbones whose channels and features scale with a width multiplier (--backbone-width)."""


# name -> (builder(space, hidden_sizes, activation, layer_norm, width), accepts(space), what it needs, for error messages)
BACKBONES: dict[str, tuple[Callable[..., Backbone], Callable[[gym.spaces.Space], bool], str]] = {
    "mlp": (_build_mlp, lambda space: isinstance(space, gym.spaces.Box), "a Box observation space"),
    "nature_cnn": (_ignoring_sizes(NatureCNN, normalizable=True), is_image_space, "image observations of shape (C, H, W) with H, W >= 36"),
    "impala_cnn": (_ignoring_sizes(ImpalaCNN, normalizable=True), is_grid_space, "image or grid observations of shape (C, H, W)"),
    "resnet": (_ignoring_sizes(ResNet), is_grid_space, "image or grid observations of shape (C, H, W)"),
    "vit": (_ignoring_sizes(ViT), is_grid_space, "image or grid observations of shape (C, H, W)"),
    "film_cnn": (_ignoring_sizes(FiLMCNN), is_grid_space, "image or grid observations of shape (C, H, W)"),
    "text": (_ignoring_sizes(TextEncoder), is_token_space,
             "token-id observations: a 1-D Box with an integer dtype (not uint8) and bounds 0..vocab-1"),
}


OBSERVATION_KINDS = ("vector", "grid", "image", "tokens", "dict")
"""What a backbone (and a preset's `observations:` block) tells observations apart by."""
_DEFAULT_BY_KIND = {"vector": "mlp", "grid": "impala_cnn", "image": "nature_cnn", "tokens": "text", "dict": "auto"}


def observation_kind(space: gym.spaces.Space) -> str:
    """`image` ((C, H, W), H and W >= 36), `grid` (smaller (C, H, W)), `tokens` (token ids), `dict`,
    or `vector` (anything else a Box holds)."""
    if isinstance(space, gym.spaces.Dict):
        return "dict"
    if is_image_space(space):
        return "image"
    if is_grid_space(space):
        return "grid"
    return "tokens" if is_token_space(space) else "vector"


def default_backbone(observation_space: gym.spaces.Space) -> str:
    """nature_cnn for images (H, W >= 36), impala_cnn for smaller (C, H, W) grids, text for token ids,
    mlp otherwise; `auto` for a Dict (each key then takes its own default, except that images next to
    token ids take film_cnn, conditioned on the text)."""
    return _DEFAULT_BY_KIND[observation_kind(observation_space)]


def _check_single(name: str, observation_space: gym.spaces.Space) -> str:
    """`name` (`auto` resolved) for a non-Dict space; UsageError when unknown or unfit."""
    if name == "auto":
        name = default_backbone(observation_space)
    if name not in BACKBONES:
        if is_backbone_spec(name):
            raise UsageError(f"per-key backbone spec {name!r} needs Dict observations, but the environment's "
                             f"observations have shape {getattr(observation_space, 'shape', None)}")
        raise UsageError(f"unknown backbone {name!r}; choose from auto, {', '.join(BACKBONES)}")
    _, accepts, needs = BACKBONES[name]
    if not accepts(observation_space):
        raise UsageError(f"backbone {name!r} needs {needs}, but the environment's observations have shape "
                         f"{getattr(observation_space, 'shape', None)}")
    return name


def backbone_names(name: str, observation_space: gym.spaces.Dict) -> dict[str, str]:
    """The registry name each key of a Dict space gets, in sorted key order; UsageError when it cannot.

    `name` is `auto`, one registry name (for every key it accepts; the others take their default,
    and at least one key must accept it) or a per-key spec "key=name,key=name" (unnamed keys take
    their default; a named key must exist and accept its backbone).
    """
    if not isinstance(observation_space, gym.spaces.Dict):
        raise UsageError(f"backbone_names needs Dict observations, got {type(observation_space).__name__}")
    spaces = {key: observation_space[key] for key in sorted(observation_space.keys())}
    for key, space in spaces.items():
        if isinstance(space, gym.spaces.Dict):
            raise UsageError(f"observation key {key!r} holds a nested Dict; multi-input backbones take one level")
    chosen = {key: "auto" for key in spaces}
    if is_backbone_spec(name):
        for key, sub_name in parse_backbone_spec(name).items():
            if key not in spaces:
                raise UsageError(f"backbone spec {name!r} names key {key!r}, but the observations have keys "
                                 f"{', '.join(spaces)}")
            chosen[key] = sub_name
    elif name != "auto":
        if name not in BACKBONES:
            raise UsageError(f"unknown backbone {name!r}; choose from auto, {', '.join(BACKBONES)}, "
                             f"or a per-key spec like 'key=name,key=name'")
        accepts = BACKBONES[name][1]
        fitting = [key for key, space in spaces.items() if accepts(space)]
        if not fitting:
            raise UsageError(f"backbone {name!r} needs {BACKBONES[name][2]}, but none of the observation keys "
                             f"({', '.join(spaces)}) has such observations")
        chosen.update({key: name for key in fitting})
    if any(is_token_space(space) for space in spaces.values()):
        # Next to an instruction, images default to the FiLM CNN: the instruction modulates their features.
        for key, space in spaces.items():
            if chosen[key] == "auto" and is_grid_space(space):
                chosen[key] = "film_cnn"
    resolved = {}
    for key, sub_name in chosen.items():
        try:
            resolved[key] = _check_single(sub_name, spaces[key])
        except UsageError as err:
            raise UsageError(f"observation key {key!r}: {err}") from None
    return resolved


def check_backbone(name: str, observation_space: gym.spaces.Space) -> str:
    """The backbone name to use (`auto` resolved); a UsageError when it cannot take these observations.

    For a Dict space every key is checked (see `backbone_names`) and `name` comes back as given.
    """
    if isinstance(observation_space, gym.spaces.Dict):
        backbone_names(name, observation_space)
        return name
    return _check_single(name, observation_space)


def resolve_backbone_name(name: str, observation_space: gym.spaces.Space) -> str:
    """A canonical name: the registry name for a single space, the full sorted per-key spec for a Dict.

    Two names build the same architecture for a space exactly when their resolved names are equal,
    which is what saved backbones are checked with.
    """
    if isinstance(observation_space, gym.spaces.Dict):
        return format_backbone_spec(backbone_names(name, observation_space))
    return _check_single(name, observation_space)


def build_backbone(name: str, observation_space: gym.spaces.Space, hidden_sizes: tuple[int, ...] = (256, 256),
                   activation: str = "relu", layer_norm: bool = False, width: float = 1.0) -> Backbone:
    """Build backbone `name` (or the default for the space when `name` is `auto`).

    `hidden_sizes` and `activation` shape the mlp backbone (in a Dict, every mlp sub-backbone);
    the other backbones have fixed sizes. `layer_norm` puts a LayerNorm before each hidden
    activation of the mlp and nature_cnn (impala_cnn: before its last one); off by default, so
    other agents' networks and checkpoints are unchanged. `width` multiplies the channels and
    features of the `SCALABLE` CNNs (the others ignore it, as they ignore `hidden_sizes`). A Dict
    space gives a `MultiInputBackbone`.
    """
    if isinstance(observation_space, gym.spaces.Dict):
        names = backbone_names(name, observation_space)
        return MultiInputBackbone({key: build_backbone(sub_name, observation_space[key], hidden_sizes, activation,
                                                       layer_norm, width)
                                   for key, sub_name in names.items()})
    name = _check_single(name, observation_space)
    return BACKBONES[name][0](observation_space, hidden_sizes=hidden_sizes, activation=activation,
                              layer_norm=layer_norm, width=width)
