"""A sweep's run directories: matching a resumed sweep's trials to the runs already made, and the
results table written when it ends (results.json, results.csv, best_config.yaml)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlbase.safefiles import atomic_write_text
from rlbase.errors import RlbaseError

if TYPE_CHECKING:
    from rlbase.sweep import SweepSpec

FINISHED = "TERMINATED"
# Settings a run rewrites in its config.json in a canonical form (rlbase.transfer.resolve): a Dict
# space's single --backbone-weights DIR becomes "key=DIR", a backbone name becomes one per key.
_PER_KEY_FIELDS = ("backbone", "backbone_weights")


def check_run_dirs(trials: list[dict[str, Any]]) -> None:
    """A resume draws the trials again from sweep.json: each run dir already written must hold the
    run of the trial it is assigned to (its seed and the trial's values), or the resume would
    continue one trial's run under another's name. A sweep.json written before the space's case
    order was kept (rlbase wrote its keys sorted) can fail this; its trials cannot be matched safely."""
    from rlbase.run import CONFIG_FILE, read_config

    for trial in trials:
        run_dir = Path(trial["run_dir"])
        if not (run_dir / CONFIG_FILE).exists():
            continue
        _, saved = read_config(run_dir)
        wanted = {"seed": trial["seed"], **trial["values"]}
        for field, value in wanted.items():
            if field in saved and value != "auto" and not same_setting(field, saved[field], value):
                raise RlbaseError(f"{run_dir} was run with {field}={saved[field]!r} but its trial in sweep.json has "
                                  f"{field}={value!r}: the trials no longer match their run dirs, so the sweep cannot "
                                  "be resumed safely")


def same_setting(field: str, saved: Any, wanted: Any) -> bool:
    """Whether a run whose config.json holds `field=saved` was made from a trial value `wanted`.

    Equal JSON, or for backbone and backbone_weights the canonical per-key form the run wrote: a
    single value went to one key or more ("text" → "image=film_cnn,mission=text"; "DIR" →
    "mission=DIR"), and the keys a per-key value names keep their value."""
    if json.dumps(saved, sort_keys=True) == json.dumps(wanted, sort_keys=True):
        return True
    if field not in _PER_KEY_FIELDS or not isinstance(saved, str) or not isinstance(wanted, str):
        return False
    saved_keys, wanted_keys = _per_key(saved), _per_key(wanted)
    if saved_keys is None:
        return False
    if wanted_keys is None:
        return wanted.strip() in saved_keys.values() and (field == "backbone" or len(saved_keys) == 1)
    if field == "backbone_weights" and set(wanted_keys) != set(saved_keys):
        return False
    return all(saved_keys.get(key) == value for key, value in wanted_keys.items())


def _per_key(text: str) -> dict[str, str] | None:
    """{key: value} of "key=value,key=value"; None for a single value (no "=")."""
    if "=" not in text:
        return None
    pairs = (item.partition("=") for item in text.split(",") if item.strip())
    return {key.strip(): value.strip() for key, _, value in pairs}


def write_results(sweep_dir: Path, spec: SweepSpec, table: Any) -> list[dict[str, Any]]:
    """results.json and results.csv (one row per trial) and best_config.yaml; returns the rows."""
    import yaml

    rows = []
    for key, entry in sorted(table.entries.items()):
        rows.append({"trial": key, "case": entry.get("case"), "status": entry.get("status"), "seed": entry.get("seed"),
                     "values": entry.get("values", {}), f"final {spec.metric}": entry.get("last"),
                     f"best {spec.metric}": entry.get("best"), "steps": entry.get("steps"),
                     "seconds": entry.get("seconds"), "run_dir": entry.get("run_dir")})
    atomic_write_text(sweep_dir / "results.json", json.dumps({"metric": spec.metric, "mode": spec.mode,
                                                              "trials": rows}, indent=1))
    fields = sorted({name for row in rows for name in row["values"]})
    out = io.StringIO()
    writer = csv.writer(out)
    header = ["trial", "case", "status", "seed", *fields, f"final {spec.metric}", f"best {spec.metric}", "steps",
              "seconds", "run_dir"]
    writer.writerow(header)
    for row in rows:
        writer.writerow([row["trial"], row["case"] or "", row["status"], row["seed"],
                         *(row["values"].get(f) for f in fields),
                         row[f"final {spec.metric}"], row[f"best {spec.metric}"], row["steps"], row["seconds"],
                         row["run_dir"]])
    atomic_write_text(sweep_dir / "results.csv", out.getvalue())
    best = best_values(rows, spec)
    if best is not None:
        header = (f"# Best of sweep {sweep_dir.name}: {spec.algo} on {spec.base.get('env_id')}, mean final "
                  f"{spec.metric} {best[1]:.4g} over seeds {best[2]}.\n# rlbase train {spec.algo} --config "
                  f"{sweep_dir / 'best_config.yaml'}\n")
        values = {k: v for k, v in spec.base.items() if k not in ("seed", "run_name", "log_dir")}
        values.update(best[0])
        atomic_write_text(sweep_dir / "best_config.yaml", header + yaml.safe_dump(values, sort_keys=True))
    return rows


def best_values(rows: list[dict[str, Any]], spec: SweepSpec) -> tuple[dict[str, Any], float, list[int]] | None:
    """(values, mean final metric over its seeds, seeds) of the best finished configuration."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row["status"] == FINISHED and row[f"final {spec.metric}"] is not None:
            groups.setdefault(json.dumps(row["values"], sort_keys=True), []).append(row)
    if not groups:
        return None
    scored = [(sum(r[f"final {spec.metric}"] for r in g) / len(g), key, g) for key, g in groups.items()]
    mean, key, group = (max if spec.mode == "max" else min)(scored, key=lambda item: item[0])
    return json.loads(key), mean, sorted(r["seed"] for r in group)
