"""The `rlbase` command: `rlbase train ALGO --env ID [flags]` and `rlbase eval RUN_DIR|CHECKPOINT`.

User mistakes (unknown env id, bad flag value, missing or corrupt checkpoint, ...) end with one
line on stderr and a non-zero exit code (2 for usage errors), never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from rlbase import __version__
from rlbase.errors import RlbaseError, UsageError


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit code 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def build_parser() -> argparse.ArgumentParser:
    from rlbase.agents import ALGORITHMS, get_algorithm
    from rlbase.config import add_config_arguments

    parser = _Parser(prog="rlbase", description="Reinforcement-learning agents on PyTorch and Gymnasium.")
    parser.add_argument("--version", action="version", version=f"rlbase {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    train = commands.add_parser("train", help="train an agent", description="Train an agent: rlbase train ALGO --env ID")
    algos = train.add_subparsers(dest="algo", metavar="ALGO", required=True)
    for name in ALGORITHMS:
        module = get_algorithm(name)
        p = algos.add_parser(name, help=module.__doc__.strip().splitlines()[0],
                             description=f"Train {name.upper()}. Values come from the dataclass defaults shown here, "
                                         "then the env family's preset (rlbase/presets), then these flags.",
                             formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        p.add_argument("--resume", metavar="RUN_DIR", default=None,
                       help="continue a run from its latest checkpoint (flags given here override its config)")
        add_config_arguments(p, module.Config)

    from rlbase.pretrain import PretrainConfig, tasks

    task_list = "\n".join(f"  {name:<22} {doc}" for name, doc in tasks().items())
    pre = commands.add_parser(
        "pretrain", help="train a backbone on a supervised task (for transfer into agents)",
        description="Supervised pretraining of a backbone with a task head. The run directory holds TensorBoard "
                    "logs and the backbone artifact that `rlbase train ... --backbone-weights DIR` loads.\n\n"
                    f"tasks:\n{task_list}",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    pre.add_argument("task", metavar="TASK", help="one of: " + ", ".join(tasks()))
    add_config_arguments(pre, PretrainConfig, skip=("task",))

    ev = commands.add_parser("eval", help="evaluate a trained agent",
                             description="Play full episodes with a trained agent and report the returns.")
    ev.add_argument("path", metavar="RUN_DIR|CHECKPOINT", help="a run directory, checkpoint folder or model.safetensors")
    ev.add_argument("--episodes", type=int, default=None, help="episodes to play (default: the config's eval_episodes)")
    ev.add_argument("--epsilon", type=float, default=None,
                    help="DQN: exploration rate while evaluating (default: the config's eval_epsilon; Atari 0.05)")
    ev.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=None,
                    help="policy-gradient agents: play the mode/mean action, or sample with --no-deterministic "
                         "(default: the config's eval_deterministic)")
    ev.add_argument("--seed", type=int, default=0, help="seed of the evaluation episodes")
    ev.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ev.add_argument("--num-envs", type=int, default=None, help="parallel envs (default: min(episodes, 8))")
    ev.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    ev.add_argument("--video", metavar="DIR", default=None, help="write an mp4 of each episode into DIR")
    return parser


def _train(args: argparse.Namespace) -> int:
    from rlbase import transfer
    from rlbase.agents import get_algorithm
    from rlbase.backbones import check_backbone
    from rlbase.checkpoint import load_checkpoint
    from rlbase.config import env_options, from_dict, resolve_config, to_json
    from rlbase.envs import check_env_id, make_vec_env
    from rlbase.logger import RunLogger
    from rlbase.run import Run, new_run_dir, read_config, write_config
    from rlbase.utils import resolve_device

    module = get_algorithm(args.algo)
    field_names = {f.name for f in dataclasses.fields(module.Config)}
    cli_values = {k: v for k, v in vars(args).items() if k in field_names}
    resume = None
    if args.resume:
        run_dir = Path(args.resume)
        saved_algo, saved = read_config(run_dir)
        if saved_algo != args.algo:
            raise UsageError(f"{run_dir} is a {saved_algo} run, not {args.algo}")
        if cli_values.get("env_id", saved["env_id"]) != saved["env_id"]:
            raise UsageError(f"{run_dir} trained on {saved['env_id']}, not {cli_values['env_id']}")
        cfg = from_dict(module.Config, {**saved, **cli_values}, str(run_dir / "config.json"))
    else:
        if "env_id" not in cli_values:
            raise UsageError("--env is required, e.g. rlbase train dqn --env CartPole-v1")
        cfg = resolve_config(module.Config, args.algo, cli_values)
    module.validate(cfg)
    check_env_id(cfg.env_id)
    device = resolve_device(cfg.device)
    if args.resume:
        resume = load_checkpoint(run_dir, device, with_buffer=True)
        step = resume[1].get("step", 0)
        if step >= cfg.total_timesteps:
            raise UsageError(f"{run_dir} already reached {step} steps; pass a larger --total-timesteps to continue")

    env = make_vec_env(cfg.env_id, cfg.num_envs, device, **env_options(cfg))
    try:  # everything the user can get wrong is checked before the run directory exists
        if not args.resume:  # a resumed run reads its weights from its own checkpoint
            if cfg.backbone_weights and "backbone" not in cli_values:
                cfg = dataclasses.replace(cfg, backbone="auto")  # the artifact's backbone, not the preset's
            cfg = transfer.resolve(cfg, env.single_observation_space)
        check_backbone(cfg.backbone, env.single_observation_space)
        module.check_env(cfg, env)
    except RlbaseError:
        env.close()
        raise
    if not args.resume:
        run_dir = new_run_dir(cfg, args.algo)
    write_config(run_dir, args.algo, cfg)
    start = resume[1].get("step", 0) if resume else 0
    logger = RunLogger(run_dir, cfg.total_timesteps, start_step=start, hparams=json.loads(to_json(cfg)))
    run = Run(run_dir, args.algo, cfg, logger, resume)
    print(f"rlbase: training {args.algo} on {cfg.env_id} ({cfg.num_envs} envs, {device}); run dir {run_dir}",
          file=sys.stderr)
    try:
        metrics = module.train(cfg, env, run)
    except KeyboardInterrupt:
        if run.snapshot is not None:
            tensors, state, buffer = run.snapshot()
            step = state["counters"]["global_step"]
            run.save(step, tensors, state, buffer)
            print(f"\nrlbase: interrupted at step {step}; checkpoint saved. Continue with: "
                  f"rlbase train {args.algo} --resume {run_dir}", file=sys.stderr)
        return 130
    finally:
        logger.close()
        env.close()
    ret = metrics.get("ep_rew_mean")
    shown = f"{ret:.2f}" if ret is not None else "n/a"
    print(f"rlbase: done: {metrics['global_step']} steps, {metrics['episodes']} episodes, "
          f"recent mean return {shown}. Evaluate with: rlbase eval {run_dir}", file=sys.stderr)
    return 0


def _eval(args: argparse.Namespace) -> int:
    from rlbase.evaluate import evaluate
    from rlbase.utils import resolve_device

    if args.episodes is not None and args.episodes <= 0:
        raise UsageError(f"invalid --episodes: must be positive, got {args.episodes}")
    if args.epsilon is not None and not 0.0 <= args.epsilon <= 1.0:
        raise UsageError(f"invalid --epsilon: must be in [0, 1], got {args.epsilon}")
    if args.num_envs is not None and args.num_envs <= 0:
        raise UsageError(f"invalid --num-envs: must be positive, got {args.num_envs}")
    report = evaluate(args.path, episodes=args.episodes, epsilon=args.epsilon, deterministic=args.deterministic,
                      seed=args.seed,
                      device=resolve_device(args.device), num_envs=args.num_envs, video_dir=args.video)
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"{report['env_id']} ({report['algo']}, step {report['global_step']}, {report['policy']} policy): "
          f"{report['num_episodes']} episodes")
    print(f"  mean return {report['mean_return']:.2f} +/- {report['std_return']:.2f} (std)   "
          f"95% CI [{report['ci95_low']:.2f}, {report['ci95_high']:.2f}]")
    print(f"  min {report['min_return']:.2f}   max {report['max_return']:.2f}   mean length {report['mean_length']:.1f}")
    for key, mean in report.get("outcomes", {}).items():
        print(f"  {key}: mean {mean:.3f} at episode end")
    if args.video:
        print(f"  videos in {args.video}")
    return 0


def _pretrain(args: argparse.Namespace) -> int:
    from rlbase.config import from_dict
    from rlbase.pretrain import PretrainConfig, pretrain

    field_names = {f.name for f in dataclasses.fields(PretrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in field_names}
    cfg = from_dict(PretrainConfig, values, "rlbase pretrain")
    result = pretrain(cfg)
    shown = "   ".join(f"{k} {v:.4f}" for k, v in result["metrics"].items() if k.startswith("val/"))
    print(f"rlbase: done: held-out {shown}")
    print(f"rlbase: backbone artifact in {result['out']}/backbone; use it with "
          f"rlbase train ppo --env ID --backbone-weights {result['out']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return {"train": _train, "eval": _eval, "pretrain": _pretrain}[args.command](args)
    except RlbaseError as exc:
        print(f"rlbase: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("\nrlbase: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
