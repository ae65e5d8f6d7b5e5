"""Search spaces and seeds of `rlbase sweep`: parsing (every mistake a one-line UsageError, before any
trial starts) and drawing the trials of grid and random search. The file format is in rlbase.sweep.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from pathlib import Path
from typing import Any

from rlbase.errors import UsageError

DISTRIBUTIONS = ("grid", "choice", "uniform", "loguniform", "randint")


# --------------------------------------------------------------------------------------------
def parse_seeds(text: str) -> list[int]:
    """`0-9`, `0,3,7` or `0-3,10` -> the seeds, in order, without repeats; a UsageError otherwise."""
    seeds: list[int] = []
    for part in filter(None, (p.strip() for p in str(text).split(","))):
        low, sep, high = part.partition("-")
        try:
            values = range(int(low), int(high) + 1) if sep else [int(part)]
        except ValueError:
            raise UsageError(f"invalid --seeds {text!r}: write seeds like 0-9 or 0,3,7") from None
        if sep and int(high) < int(low):
            raise UsageError(f"invalid --seeds {text!r}: the range {part} is empty")
        seeds += [s for s in values if s not in seeds]
    if not seeds or any(s < 0 or s >= 2**32 for s in seeds):
        raise UsageError(f"invalid --seeds {text!r}: seeds are integers from 0 to 2**32 - 1")
    return seeds


def load_space_file(path: str | Path) -> dict[str, Any]:
    """The search space in a YAML or JSON file (a mapping of config field -> distribution or value)."""
    from rlbase.config import read_mapping_file

    return read_mapping_file(path, "--space", "config field -> distribution")


def parse_space(space: dict[str, Any], config_cls: type) -> dict[str, tuple[str, list[Any]]]:
    """`{field: (distribution, arguments)}`, checked: known fields (not `seed`: use --seeds), known
    distributions, numeric ranges with low < high (and low > 0 for loguniform), non-empty lists.
    A plain value is a `grid` of one value."""
    fields = {f.name for f in dataclasses.fields(config_cls)}
    parsed: dict[str, tuple[str, list[Any]]] = {}
    for name, spec in space.items():
        where = f"search space field {name!r}"
        if name == CASES:
            parsed[CASES] = ("cases", [_parse_case(case, values, fields) for case, values in _case_items(spec)])
            continue
        if name == "seed":
            raise UsageError(f"{where}: seeds come from --seeds, not the search space")
        if name not in fields:
            raise UsageError(f"{where}: not a config field of {config_cls.__name__}")
        if not isinstance(spec, dict):
            parsed[name] = ("grid", [spec])
            continue
        if len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
            raise UsageError(f"{where}: write one of {', '.join(DISTRIBUTIONS)} as {{kind: [values]}}, got {spec!r}")
        kind, args = next(iter(spec.items()))
        if not isinstance(args, list) or not args:
            raise UsageError(f"{where}: {kind} needs a non-empty list, got {args!r}")
        if kind in ("uniform", "loguniform", "randint"):
            numeric = all(isinstance(a, (int, float)) and not isinstance(a, bool) and math.isfinite(a) for a in args)
            if len(args) != 2 or not numeric or not args[0] < args[1]:
                raise UsageError(f"{where}: {kind} needs [low, high] with low < high, got {args!r}")
            if kind == "loguniform" and args[0] <= 0:
                raise UsageError(f"{where}: loguniform needs low > 0, got {args!r}")
            if kind == "randint" and not all(isinstance(a, int) for a in args):
                raise UsageError(f"{where}: randint needs integers [low, high), got {args!r}")
        parsed[name] = (kind, list(args))
    return parsed


CASES = "cases"
"""The search-space key of named sets of values (the arms of an experiment)."""


def _case_items(spec: Any) -> list[tuple[Any, Any]]:
    if not isinstance(spec, dict) or not spec:
        raise UsageError("search space 'cases' must map case names to sets of values, e.g. {scratch: {}, "
                         "frozen: {freeze_backbone: true}}")
    return list(spec.items())


def _parse_case(case: Any, values: Any, fields: set[str]) -> list[Any]:
    if not isinstance(case, str) or not case or not isinstance(values, dict):
        raise UsageError(f"search space case {case!r}: write NAME: {{field: value, ...}}")
    unknown = sorted(set(values) - fields) + (["seed"] if "seed" in values else [])
    if unknown:
        raise UsageError(f"search space case {case!r}: {', '.join(map(str, unknown))} cannot be set here "
                         "(not a config field, or the seed: use --seeds)")
    return [case, values]


def _sample(kind: str, args: list[Any], rng: Any) -> Any:
    if kind == "choice":
        return args[int(rng.integers(len(args)))]
    if kind == "uniform":
        return float(rng.uniform(args[0], args[1]))
    if kind == "loguniform":
        return float(math.exp(rng.uniform(math.log(args[0]), math.log(args[1]))))
    return int(rng.integers(args[0], args[1]))  # randint: [low, high)


def draw_trials(space: dict[str, tuple[str, list[Any]]], seeds: list[int], num_samples: int,
                search_seed: int) -> list[dict[str, Any]]:
    """Grid and random search, drawn up front: `num_samples` draws of the random fields for every
    combination of the grid fields, each played on every seed. `[{"values": {...}, "seed": s}]`."""
    import numpy as np

    rng = np.random.default_rng(search_seed)
    cases = space[CASES][1] if CASES in space else [[None, {}]]
    grid = {name: args for name, (kind, args) in space.items() if kind == "grid"}
    random_fields = {name: spec for name, spec in space.items() if spec[0] not in ("grid", "cases")}
    trials = []
    for case, case_values in cases:
        for combo in itertools.product(*grid.values()) if grid else [()]:
            fixed = {**case_values, **dict(zip(grid, combo))}
            for _ in range(num_samples if random_fields else 1):
                values = {**fixed, **{name: _sample(kind, args, rng) for name, (kind, args) in random_fields.items()}}
                trials += [{"values": values, "seed": seed, **({"case": case} if case else {})} for seed in seeds]
    return trials


def check_values(algo: str, base: dict[str, Any], space: dict[str, tuple[str, list[Any]]]) -> None:
    """Validate the base values and every value the space can produce at its ends (choices, grid
    values, range bounds) before any trial starts: a UsageError naming the field."""
    from rlbase.agents import get_spec
    from rlbase.config import resolve_config

    agent = get_spec(algo)
    agent.validate(resolve_config(agent.Config, algo, base))
    for case, values in space[CASES][1] if CASES in space else []:
        try:
            agent.validate(resolve_config(agent.Config, algo, {**base, **values}))
        except UsageError as exc:
            raise UsageError(f"search space case {case!r}: {exc}") from None
        except TypeError:
            raise UsageError(f"search space case {case!r}: a value has the wrong type") from None
    for name, (kind, args) in space.items():
        if kind == "cases":
            continue
        for value in (args if kind in ("grid", "choice") else [args[0], args[1] - (kind == "randint")]):
            try:
                agent.validate(resolve_config(agent.Config, algo, {**base, name: value}))
            except UsageError as exc:
                raise UsageError(f"search space field {name!r} value {value!r}: {exc}") from None
            except TypeError:
                raise UsageError(f"search space field {name!r}: value {value!r} has the wrong type") from None


