"""Presets from data files: rlbase/presets/<algo>.yaml's `families:`, `envs:` (with per-observation-
kind values) and named `recipes:` (--preset), resolved for an env id. `rlbase.config` applies them
under --config and the flags."""

from __future__ import annotations

import functools
from importlib import resources
from typing import Any

from rlbase.envs import is_atari, is_native
from rlbase.errors import UsageError

PRESET_FAMILIES = {"atari": "ALE/<Game>-v5 ids", "rlbase": "rlbase's own envs (rlbase/...)",
                   "gymnasium": "every other id (Gymnasium's classic control, Box2D, your own envs, ...)"}
"""The preset families (the `families:` blocks of rlbase/presets/<algo>.yaml) and the ids they cover."""


def env_family(env_id: str) -> str:
    """The preset family of an env id (PRESET_FAMILIES): `atari`, `rlbase` or `gymnasium`."""
    plain = _plain_id(env_id)
    if is_atari(plain):
        return "atari"
    return "rlbase" if is_native(plain) else "gymnasium"


def _plain_id(env_id: str) -> str:
    """The registered id of `MODULE:ID` (Gymnasium's convention), or `env_id` itself."""
    return env_id.rsplit(":", 1)[-1]


@functools.lru_cache(maxsize=None)
def _preset_file(algo: str) -> dict[str, Any]:
    import yaml

    text = resources.files("rlbase").joinpath("presets", f"{algo}.yaml").read_text()
    # libyaml's safe loader when PyYAML was built with it: the pure-Python one takes ~80 ms here.
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}


def load_preset(algo: str, env_id: str, observations: str | None = None, recipe: str = "") -> dict[str, Any]:
    """Preset values for `algo` on `env_id`: the family's block, then the env's own block, then, when
    the kind of the env's `observations` is known, the env block's `observations: {KIND: {...}}`
    entry (values tuned for that kind only, such as a backbone), then the named `recipe`'s values
    for the env (`recipe_values`)."""
    data = _preset_file(algo)
    values = dict(data.get("families", {}).get(env_family(env_id), {}) or {})
    env_block = dict(data.get("envs", {}).get(_plain_id(env_id), {}) or {})
    by_kind = env_block.pop("observations", None) or {}
    values.update(env_block)
    if observations is not None:
        values.update(by_kind.get(observations, {}) or {})
    values.update(recipe_values(algo, env_id, recipe))
    return values


def recipe_names(algo: str) -> list[str]:
    """The named recipes of `algo` (`recipes:` in rlbase/presets/<algo>.yaml), for --preset."""
    return list(_preset_file(algo).get("recipes") or {})


def recipe_values(algo: str, env_id: str, name: str) -> dict[str, Any]:
    """The values recipe `name` of `algo` sets on `env_id`: its `all` block, then its block for the
    env's family (atari, rlbase, gymnasium), then its `envs: {ID: {...}}` entry ({} for name "").
    A one-line UsageError listing the recipes for an unknown name."""
    if not name:
        return {}
    recipes = _preset_file(algo).get("recipes") or {}
    if name not in recipes:
        available = ", ".join(recipes) or f"none ({algo} has no recipes)"
        raise UsageError(f"invalid --preset: unknown preset {name!r} for {algo}; available: {available}")
    block = recipes[name] or {}
    values = dict(block.get("all") or {})
    if env_id:
        values.update(block.get(env_family(env_id)) or {})
        values.update((block.get("envs") or {}).get(_plain_id(env_id)) or {})
    return values


def describe_presets(algo: str) -> str:
    """Which preset applies to which envs, for `rlbase train ALGO --help`."""
    data = _preset_file(algo)
    envs = data.get("envs") or {}
    width = max([len(env_id) for env_id in envs] + [16]) + 2
    recipes = data.get("recipes") or {}
    order = "family < env < --preset recipe < --config < your flags" if recipes else "family < env < your flags"
    lines = [f"presets (rlbase/presets/{algo}.yaml): dataclass defaults < {order}"]
    lines += [f"  {'family ' + family:<{width}}{ids}" for family, ids in PRESET_FAMILIES.items()]
    for env_id, block in envs.items():
        kinds = (block or {}).get("observations") or {}
        tuned = "".join(f"; for {kind} observations only: " + ", ".join(f"{k} {v}" for k, v in values.items())
                        for kind, values in kinds.items())
        lines.append(f"  {env_id:<{width}}family {env_family(env_id)}, then its own values{tuned}")
    if recipes:
        lines.append("recipes (--preset NAME): over the env's preset, under --config and your flags")
        for name, block in recipes.items():
            lines.append(f"  {name:<{width}}{(block or {}).get('about', '')}")
    return "\n".join(lines)
