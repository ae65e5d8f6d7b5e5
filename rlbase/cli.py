"""The `rlbase` command: `rlbase train ALGO --env ID [flags]`, `rlbase eval RUN_DIR|CHECKPOINT` and
`rlbase pretrain TASK`.

User mistakes (unknown env id, bad flag value, missing or corrupt checkpoint, ...) end with one
line on stderr and a non-zero exit code (2 for usage errors), never a traceback. Training goes
through the run lifecycle (rlbase.lifecycle), like every other way of starting a run.

Start-up matters (a CartPole run trains in ~2 s): only the parser of the command being run gets
its flags, and nothing a run does not use is imported.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import sys

from rlbase import __version__
from rlbase.errors import RlbaseError, UsageError
from rlbase.utils import plural


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit code 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; the flags of `train ALGO` / `pretrain` are added only for the command in `argv`."""
    from rlbase.agents import ALGORITHMS, get_agent
    from rlbase.config import add_config_arguments, describe_presets

    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    words = [a for a in argv if not a.startswith("-")]
    chosen_algo = words[1] if command == "train" and len(words) > 1 else None

    parser = _Parser(prog="rlbase", description="Reinforcement-learning agents on PyTorch and Gymnasium.")
    parser.add_argument("--version", action="version", version=f"rlbase {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    train = commands.add_parser("train", help="train an agent", description="Train an agent: rlbase train ALGO --env ID")
    algos = train.add_subparsers(dest="algo", metavar="ALGO", required=True)
    for name in ALGORITHMS:
        agent = get_agent(name)
        p = algos.add_parser(name, help=agent.summary, formatter_class=argparse.RawDescriptionHelpFormatter,
                             description=f"Train {name.upper()}: {agent.summary}. Values come from the dataclass "
                                         "defaults shown here, then the env's preset, then these flags "
                                         "(--print-config shows the result).",
                             epilog=describe_presets(name) if name == chosen_algo else None)
        if name != chosen_algo:
            continue
        p.add_argument("--resume", metavar="RUN_DIR", default=None,
                       help="continue a run from its latest checkpoint (flags given here override its config)")
        p.add_argument("--print-config", action="store_true",
                       help="print the fully resolved config (presets and flags applied) as JSON and exit")
        add_config_arguments(p, agent.Config)

    pre = commands.add_parser("pretrain", help="train a backbone on a supervised task (for transfer into agents)",
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    if command == "pretrain":
        from rlbase.pretrain import PretrainConfig, tasks

        task_list = "\n".join(f"  {task:<22} {doc}" for task, doc in tasks().items())
        pre.description = ("Supervised pretraining of a backbone with a task head. The run directory holds "
                           "TensorBoard logs and the backbone artifact that `rlbase train ... --backbone-weights DIR` "
                           f"loads.\n\ntasks:\n{task_list}")
        pre.add_argument("task", metavar="TASK", help="one of: " + ", ".join(tasks()))
        add_config_arguments(pre, PretrainConfig, skip=("task",))

    ev = commands.add_parser("eval", help="evaluate a trained agent",
                             description="Play full episodes with a trained agent and report the returns.")
    ev.add_argument("path", metavar="RUN_DIR|CHECKPOINT", help="a run directory, checkpoint folder or model.safetensors")
    ev.add_argument("--best", action="store_true",
                    help="evaluate the run's best checkpoint (best/, kept by --eval-freq) instead of its newest")
    ev.add_argument("--episodes", type=int, default=None, help="episodes to play (default: the config's eval_episodes)")
    ev.add_argument("--epsilon", type=float, default=None,
                    help="DQN: exploration rate while evaluating (default: the config's eval_epsilon; Atari 0.05)")
    ev.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=None,
                    help="policy-gradient agents: play the mode/mean action, or sample with --no-deterministic "
                         "(default: the config's eval_deterministic)")
    ev.add_argument("--seed", type=int, default=0, help="seed of the evaluation episodes (default: 0)")
    ev.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    ev.add_argument("--num-envs", type=int, default=None, help="parallel envs (default: min(episodes, 8))")
    ev.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    ev.add_argument("--video", metavar="DIR", default=None, help="write an mp4 of each episode into DIR")
    return parser


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _train(args: argparse.Namespace) -> int:
    from rlbase.agents import get_agent
    from rlbase.lifecycle import TrainingInterrupted, execute, plan, plan_resume

    agent = get_agent(args.algo)
    field_names = {f.name for f in dataclasses.fields(agent.Config)}
    values = {k: v for k, v in vars(args).items() if k in field_names}
    p = plan_resume(args.resume, args.algo, values) if args.resume else plan(args.algo, values)
    try:
        if args.print_config:
            print(json.dumps({"algo": args.algo, "config": dataclasses.asdict(p.config)}, indent=2, sort_keys=True))
            return 0
        try:
            metrics = execute(p, announce=_say)
        except TrainingInterrupted as stop:
            _say(f"\nrlbase: interrupted at step {stop.step:,}; checkpoint saved. Continue with: "
                 f"rlbase train {args.algo} --resume {stop.run_dir}")
            return 130
    finally:
        p.close()
    run_dir = metrics["run_dir"]
    ret = metrics.get("ep_rew_mean")
    shown = f"{ret:.2f}" if ret is not None else "n/a"
    stopped = f" ({metrics['stop_reason']})" if metrics.get("stop_reason") else ""
    _say(f"rlbase: done{stopped}: {plural(metrics['global_step'], 'step')}, {plural(metrics['episodes'], 'episode')}, "
         f"recent mean return {shown}. Evaluate with: rlbase eval {run_dir}")
    best = metrics.get("best_eval")
    if best and best["step"] is not None:
        _say(f"rlbase: best evaluation: mean return {best['mean_return']:.2f} at step {best['step']:,} "
             f"(kept in best/: rlbase eval {run_dir} --best)")
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
    report = evaluate(args.path, best=args.best, episodes=args.episodes, epsilon=args.epsilon,
                      deterministic=args.deterministic, seed=args.seed, device=resolve_device(args.device),
                      num_envs=args.num_envs, video_dir=args.video)
    if args.json:
        print(json.dumps(report))
        return 0
    step = f"step {report['global_step']:,}, " if isinstance(report["global_step"], int) else ""
    print(f"{report['env_id']} ({report['algo']}, {step}{report['policy']} policy): "
          f"{plural(report['num_episodes'], 'episode')}")
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
        args = build_parser(argv).parse_args(argv)
        return {"train": _train, "eval": _eval, "pretrain": _pretrain}[args.command](args)
    except RlbaseError as exc:
        print(f"rlbase: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("\nrlbase: interrupted", file=sys.stderr)
        return 130


def run() -> None:
    """The console script: `main`, with the start-up objects out of the garbage collector's way,
    then a fast exit.

    With torch loaded, the interpreter's teardown (freeing every module object) takes ~0.35 s
    here, a tenth of a CartPole run. By the time `main` returns everything rlbase writes is closed
    and synced (logs, checkpoints, envs), so the process ends without it once the standard
    streams are flushed.
    """
    # torch's and gymnasium's import leaves ~1M long-lived objects; every full garbage collection
    # would walk them again (~70 ms each here). They never become garbage: move them out of the
    # collector's generations.
    gc.freeze()
    code = main()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (BrokenPipeError, ValueError):  # a closed pipe (`rlbase eval ... | head`) is not an error
        pass
    os._exit(code)


if __name__ == "__main__":
    run()
