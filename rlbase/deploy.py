"""Running an ONNX export of `rlbase export` with onnxruntime: the file's format (inputs, outputs,
metadata), a checked session, and `rlbase eval model.onnx`.

An export is one graph, the agent's greedy acting path (see rlbase/export.py):

    inputs   `obs`, or one input per key of a Dict observation (in the space's key order), each
             `(batch, *shape)` in the space's dtype; the batch dimension is dynamic
    outputs  `outputs` (Q-values, logits or the Gaussian mean, float32) and `actions` (int64
             indices, or float32 Box actions), both `(batch, ...)`

Its `metadata_props` say what it is (strings, JSON where structured): `rlbase_format`,
`rlbase_version`, `algo`, `env_id`, `env_kwargs`, `observation_space`, `action_space`,
`preprocessing`, `kind`, `inputs`, `outputs`, `global_step`, `config` (the run's config, from which
`rlbase eval` builds the env) and, for Gaussian policies, `log_std` (their state-independent
log-std, so that a stochastic evaluation can sample).

`rlbase eval model.onnx` (or the export folder) builds no torch model: onnxruntime runs the graph,
the env comes from `rlbase.config.make_env` with the metadata's config, and the report has the
fields of `rlbase eval RUN`. It plays the config's evaluation policy: greedy actions from the graph,
or DQN's epsilon-greedy over the graph's Q-values, or a sample of the distribution the graph's
outputs parameterise (`--no-deterministic`, or a config that evaluates stochastically), drawn from
the generator exactly as the torch policy draws them, so both play the same episodes. Everything
read from the file is checked: a foreign, corrupt or hand-edited file is one line naming it. The
session is built from the file's bytes, so a graph pointing at external data files cannot make
onnxruntime read them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch

from rlbase.errors import RlbaseError, RlbaseWarning, UsageError

if TYPE_CHECKING:
    import gymnasium as gym

    from rlbase.agents import Agent, Policy

MODEL_FILE = "model.onnx"
FORMAT = "rlbase-onnx-policy/1"
MAX_ONNX_BYTES = 2**31 - 1
"""A protobuf's limit: larger models would need external data files, which rlbase does not write or read."""
DEPLOY_HINT = "pip install 'rlbase[deploy]'"


def require_deploy() -> Any:
    """onnxruntime (and onnx, onnxscript for exporting), or one line saying how to install them."""
    try:
        import onnxruntime
    except ImportError:
        raise RlbaseError(f"ONNX needs onnxruntime: {DEPLOY_HINT}") from None
    return onnxruntime


def space_json(space: gym.spaces.Space) -> dict[str, Any]:
    """A JSON description of a space, exact enough to check an env against (bounds as one number
    when they are all equal)."""
    import gymnasium as gym

    def bound(values: np.ndarray) -> Any:
        flat = [v if math.isfinite(v) else str(v) for v in np.asarray(values, dtype=np.float64).ravel().tolist()]
        return flat[0] if flat and all(v == flat[0] for v in flat) else flat

    if isinstance(space, gym.spaces.Dict):
        return {"type": "Dict", "spaces": {key: space_json(sub) for key, sub in space.spaces.items()}}
    if isinstance(space, gym.spaces.Box):
        return {"type": "Box", "shape": list(space.shape), "dtype": str(space.dtype), "low": bound(space.low),
                "high": bound(space.high)}
    if isinstance(space, gym.spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, gym.spaces.MultiDiscrete):
        return {"type": "MultiDiscrete", "nvec": np.asarray(space.nvec).tolist(),
                "start": np.asarray(space.start).tolist()}
    raise UsageError(f"rlbase export does not describe {type(space).__name__} spaces")


def input_names(space: gym.spaces.Space) -> list[str]:
    """The graph's inputs: `obs`, or the keys of a Dict observation in its order."""
    spaces = getattr(space, "spaces", None)
    return list(spaces) if isinstance(spaces, dict) else ["obs"]


def as_inputs(obs: Any, names: list[str]) -> tuple[torch.Tensor, ...]:
    return tuple(obs[name] for name in names) if isinstance(obs, dict) else (obs,)


def onnx_session(model: bytes | Path, what: str) -> Any:
    """An onnxruntime CPU session of a serialized model. Built from bytes, never from a path: a file
    that points at external data (other files) cannot make onnxruntime read them."""
    ort = require_deploy()
    if isinstance(model, Path):
        from rlbase.safefiles import regular_file

        try:
            size = regular_file(model, what).stat().st_size
            if size > MAX_ONNX_BYTES:
                raise RlbaseError(f"{model}: {size:,} bytes is over ONNX's 2 GiB protobuf limit")
            model = model.read_bytes()
        except OSError as exc:
            raise RlbaseError(f"cannot read {what} {model}: {exc.strerror or exc}") from None
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: its warnings are about graph rewrites
    # torch's thread count (rlbase and OMP_NUM_THREADS set it): onnxruntime's default of every core,
    # spinning, is slower for small policies on a busy machine and unfair to compare with torch
    options.intra_op_num_threads = torch.get_num_threads()
    try:
        return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001  (onnxruntime has its own kinds: InvalidProtobuf, Fail, ...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RlbaseError(f"{what} is not an ONNX model onnxruntime can load ({first[:300]})") from None


def run_session(session: Any, obs: Any, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(outputs, actions) of a batch of observations (torch tensors, any device)."""
    feed = {name: x.detach().cpu().numpy() for name, x in zip(names, as_inputs(obs, names))}
    outputs, actions = session.run(["outputs", "actions"], feed)
    return outputs, actions


# --- rlbase eval model.onnx --------------------------------------------------------------------


def onnx_model_path(path: str | Path) -> Path | None:
    """The ONNX model `rlbase eval PATH` should play: PATH itself (a .onnx file) or an export folder's
    model.onnx; None for anything else (a run directory or checkpoint)."""
    path = Path(path)
    if path.suffix == ".onnx":
        return path
    if path.is_dir() and (path / MODEL_FILE).is_file() and not (path / "config.json").exists():
        return path / MODEL_FILE
    return None


class OnnxArtifact(NamedTuple):
    session: Any
    agent: Agent
    config: Any
    names: list[str]
    kind: str
    metadata: dict[str, str]
    log_std: torch.Tensor | None
    """A Gaussian policy's state-independent log-std (metadata `log_std`), for sampling; else None."""


def read_artifact(path: Path) -> OnnxArtifact:
    """The onnxruntime session of an exported model and its metadata, checked (a hand-edited or
    foreign file is one line naming it)."""
    from rlbase.config import saved_config

    if not path.exists():
        raise RlbaseError(f"{path} does not exist")
    session = onnx_session(path, f"{path}")
    meta = dict(session.get_modelmeta().custom_metadata_map)
    if meta.get("rlbase_format") != FORMAT:
        raise RlbaseError(f"{path} is not an rlbase policy export (metadata rlbase_format is "
                          f"{meta.get('rlbase_format')!r}, expected {FORMAT!r})")

    def field(key: str, kind: type) -> Any:
        try:
            value = json.loads(meta[key]) if kind is not str else meta[key]
        except KeyError:
            raise RlbaseError(f"{path}: metadata field {key!r} is missing") from None
        except ValueError:
            raise RlbaseError(f"{path}: metadata field {key!r} is not valid JSON") from None
        if not isinstance(value, kind):
            raise RlbaseError(f"{path}: metadata field {key!r} should be a {kind.__name__}")
        return value

    algo, values, names, kind = field("algo", str), field("config", dict), field("inputs", list), field("kind", str)
    agent, cfg = saved_config(algo, values, f"{path} metadata config")
    graph_inputs = [i.name for i in session.get_inputs()]
    graph_outputs = [o.name for o in session.get_outputs()]
    if names != graph_inputs or graph_outputs != ["outputs", "actions"]:
        raise RlbaseError(f"{path}: the graph's inputs {graph_inputs} and outputs {graph_outputs} are not the "
                          f"metadata's {names} and ['outputs', 'actions']")
    kinds = ("q",) if agent.exploration == "epsilon" else ("categorical", "multicategorical", "gaussian")
    if kind not in kinds:
        raise RlbaseError(f"{path}: metadata kind {kind!r} does not fit algo {algo!r}")
    log_std = None
    if "log_std" in meta:  # a Gaussian's: the graph outputs the mean; sampling needs the std beside it
        values = field("log_std", list)
        width = session.get_outputs()[0].shape[-1]
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values) or len(values) != width:
            raise RlbaseError(f"{path}: metadata field 'log_std' should be {width} finite numbers (one per action "
                              "dimension)")
        log_std = torch.tensor(values, dtype=torch.float32)
    return OnnxArtifact(session, agent, cfg, names, kind, meta, log_std)


def onnx_policy(artifact: OnnxArtifact, cfg: Any, action_space: gym.spaces.Space, device: torch.device) -> Policy:
    """`policy(obs, generator) -> actions` through onnxruntime: the graph's greedy actions; for DQN
    epsilon-greedy over its Q-values, for a stochastic policy-gradient evaluation a sample of the
    distribution its outputs parameterise: drawn from the generator exactly as the torch policy draws."""
    session, names = artifact.session, artifact.names

    def outputs(obs: Any) -> torch.Tensor:
        return torch.from_numpy(run_session(session, obs, names)[0]).to(device)

    if artifact.kind == "q" and cfg.eval_epsilon > 0:
        from rlbase.agents.dqn import select_actions

        return lambda obs, generator: select_actions(outputs, obs, cfg.eval_epsilon, int(action_space.n), generator)
    if artifact.kind != "q" and not cfg.eval_deterministic:
        from rlbase.agents.distributions import env_actions, make_distribution

        dist = make_distribution(action_space, cfg.action_bounds)
        log_std = artifact.log_std

        def sample(obs: Any, generator: torch.Generator) -> torch.Tensor:
            params = outputs(obs)
            if log_std is not None:
                params = torch.cat([params, log_std.to(device).expand_as(params)], dim=-1)
            return env_actions(dist, dist.sample(params, generator), action_space)

        return sample
    return lambda obs, generator: torch.from_numpy(run_session(session, obs, names)[1]).to(device)


def evaluate_onnx(path: str | Path, *, episodes: int | None = None, epsilon: float | None = None,
                  deterministic: bool | None = None, seed: int = 0, device: torch.device, num_envs: int | None = None,
                  video_dir: str | Path | None = None, progress: bool | None = None,
                  env_kwargs: dict[str, Any] | None = None, best: bool = False, save: bool = True) -> dict[str, Any]:
    """`rlbase eval model.onnx`: play an exported model with onnxruntime on the eval split of the env
    its metadata names; the report of `rlbase eval RUN` (saved beside the file as eval_<name>.json)."""
    from rlbase.config import make_env
    from rlbase.evaluate import evaluate_policy, evaluation_config
    from rlbase.logger import Progress
    from rlbase.safefiles import atomic_write_text, disk_error

    path = onnx_model_path(path) or Path(path)
    if best:
        raise UsageError("--best needs a run directory; an ONNX export holds one policy")
    if path.is_file():
        from rlbase.backbone_compress import ONNX_FORMAT, evaluate_onnx_backbone, refuse_flags

        session = onnx_session(path, f"{path}")
        meta = dict(session.get_modelmeta().custom_metadata_map)
        if meta.get("rlbase_format") == ONNX_FORMAT:  # an exported backbone: held-out metrics, no episodes
            refuse_flags("eval", {"--episodes": episodes is not None, "--epsilon": epsilon is not None,
                                  "--deterministic": deterministic is not None, "--num-envs": num_envs is not None,
                                  "--video": video_dir is not None, "--env-kwargs": bool(env_kwargs)})
            return evaluate_onnx_backbone(path, session, meta)
    artifact = read_artifact(path)
    agent = artifact.agent
    cfg = evaluation_config(agent, artifact.config, deterministic, epsilon)
    if artifact.kind == "gaussian" and not cfg.eval_deterministic and artifact.log_std is None:
        raise UsageError(f"{path} has no log_std in its metadata, so it cannot sample: evaluate its mean with "
                         "--deterministic")
    if env_kwargs:
        cfg = dataclasses.replace(cfg, env_kwargs={**cfg.env_kwargs, **env_kwargs})
    episodes = episodes or cfg.eval_episodes
    video = Path(video_dir) if video_dir is not None else None
    if video is not None:
        if video.exists() and not video.is_dir():
            raise UsageError(f"--video expects a folder for the videos; {video} is a file")
        video.mkdir(parents=True, exist_ok=True)
    env = make_env(cfg, 1 if video is not None else (num_envs or min(episodes, 8)), device, training=False,
                   render=video is not None)
    try:
        for what, space in (("observation_space", env.single_observation_space),
                            ("action_space", env.single_action_space)):
            if json.loads(artifact.metadata.get(what, "null")) != space_json(space):
                raise RlbaseError(f"{path}: the env's {what.replace('_', ' ')} is not the one the model was "
                                  f"exported for ({space})")
        policy = onnx_policy(artifact, cfg, env.single_action_space, env.device)
        with Progress(episodes, unit="episode", desc="eval", enabled=progress) as bar:
            report = evaluate_policy(env, policy, episodes, seed, video, bar)
    finally:
        env.close()
    try:
        step = json.loads(artifact.metadata.get("global_step", "null"))
    except ValueError:
        step = None
    report = {"env_id": cfg.env_id, "algo": agent.name, "epsilon": cfg.eval_epsilon if agent.exploration == "epsilon"
              else None, "policy": agent.describe_policy(cfg), "seed": seed, "num_episodes": episodes, **report,
              "checkpoint": str(path), "global_step": step if isinstance(step, int) else None, "runtime": "onnxruntime",
              **({"env_kwargs": cfg.env_kwargs} if env_kwargs else {})}
    if save:
        file = path.with_name(f"eval_{path.stem}.json")
        try:
            atomic_write_text(file, json.dumps(report, indent=2))
        except OSError as exc:
            warnings.warn(f"{disk_error(exc, 'the evaluation report', file)}", RlbaseWarning, stacklevel=2)
    return report
