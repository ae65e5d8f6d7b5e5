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
import signal
import sys
import threading
import warnings

from rlbase import __version__
from rlbase.errors import INTERRUPT, RlbaseError, RlbaseWarning, UsageError
from rlbase.words import plural


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit code 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; the flags of `train ALGO` / `pretrain` are added only for the command in `argv`."""
    from rlbase.agents import ALGORITHMS, get_spec
    from rlbase.config import add_config_arguments, describe_presets

    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    words = [a for a in argv if not a.startswith("-")]
    chosen_algo = words[1] if command == "train" and len(words) > 1 else None
    chosen_sweep_algo = next((w for w in words[1:] if w in ALGORITHMS), None) if command == "sweep" else None

    parser = _Parser(prog="rlbase", description="Reinforcement-learning agents on PyTorch and Gymnasium.")
    parser.add_argument("--version", action="version", version=f"rlbase {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    train = commands.add_parser("train", help="train an agent", description="Train an agent: rlbase train ALGO --env ID")
    algos = train.add_subparsers(dest="algo", metavar="ALGO", required=True)
    for name in ALGORITHMS:
        agent = get_spec(name)  # the config module only: building the parser imports no torch
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
        p.add_argument("--config", metavar="FILE", default=None,
                       help="YAML or JSON of config values, applied over the preset (flags still win), e.g. a "
                            "sweep's best_config.yaml")
        add_config_arguments(p, agent.Config)

    sweep = commands.add_parser(
        "sweep", help="many seeds and hyperparameter searches, each trial an rlbase run, on Ray Tune",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run trials of `rlbase train ALGO` (every train flag applies to each trial) on Ray Tune: "
                    "rlbase sweep ALGO --env ID --seeds 0-9 [--space FILE] ... ; rlbase sweep --resume SWEEP_DIR.")
    sweep.add_argument("--resume", metavar="SWEEP_DIR", default=None,
                       help="resume an interrupted sweep: finished trials are kept, the others continue")
    sweep.add_argument("--address", default=None, help="join the Ray cluster at ADDRESS (default: start Ray here)")
    sweep_algos = sweep.add_subparsers(dest="algo", metavar="ALGO")
    if command == "sweep":
        from rlbase.sweep import SCHEDULERS, SEARCHES

        for name in ALGORITHMS:
            agent = get_spec(name)
            p = sweep_algos.add_parser(name, help=agent.summary, formatter_class=argparse.RawDescriptionHelpFormatter,
                                       epilog=describe_presets(name) if name == chosen_sweep_algo else None)
            if name != chosen_sweep_algo:
                continue
            p.add_argument("--seeds", default="0", help="seeds of every configuration: 0-9, 0,3,7 (default: 0)")
            p.add_argument("--space", metavar="FILE", default=None,
                           help="search space (YAML/JSON): field: {grid|choice: [..]} or {uniform|loguniform|randint: "
                                "[low, high]} or a value")
            p.add_argument("--num-samples", type=int, default=1, help="configurations drawn from the space (default: 1)")
            p.add_argument("--search", choices=SEARCHES, default="random",
                           help="random (drawn up front) or optuna (model-based) (default: random)")
            p.add_argument("--search-seed", type=int, default=0, help="seed of the search's own draws (default: 0)")
            p.add_argument("--scheduler", choices=SCHEDULERS, default="fifo",
                           help="fifo (every trial runs its budget) or asha (early stopping) (default: fifo)")
            p.add_argument("--metric", default=None,
                           help="what to optimise (default: eval/mean_reward with --eval-freq, else rollout/ep_rew_mean)")
            p.add_argument("--mode", choices=("max", "min"), default="max", help="(default: max)")
            p.add_argument("--cpus-per-trial", type=float, default=1.0,
                           help="CPUs per trial; torch threads follow it (default: 1)")
            p.add_argument("--gpus-per-trial", type=float, default=0.0, help="GPUs per trial, fractions allowed (default: 0)")
            p.add_argument("--name", default="", help="sweep directory name under --log-dir (default: env__algo__sweep__time)")
            p.add_argument("--address", default=argparse.SUPPRESS,
                           help="join the Ray cluster at ADDRESS, e.g. 10.0.0.5:6379 (default: start Ray here)")
            add_config_arguments(p, agent.Config, skip=("seed",))

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

    plot_parser = commands.add_parser("plot", help="learning curves of runs and sweeps, mean and 95%% CI across seeds",
                                      description="Plot logged tags of run directories, sweep directories or globs "
                                                  "against env steps or wall-clock, grouped, with bootstrap bands.")
    report_parser = commands.add_parser("report", help="a table of runs and sweeps: final/best return, IQM, 95%% CI",
                                        description="Aggregate runs per group (seeds pooled): mean, IQM and bootstrap "
                                                    "confidence intervals of the final and best metric, success, steps.")
    if command == "plot":
        from rlbase import plot

        plot.add_arguments(plot_parser)
    if command == "report":
        from rlbase import report

        report.add_arguments(report_parser)
    for name, summary in COMPRESS_COMMANDS.items():
        p = commands.add_parser(name, help=summary, formatter_class=argparse.RawDescriptionHelpFormatter)
        if command == name:
            from importlib import import_module

            import_module(f"rlbase.{name}").add_arguments(p)

    ev = commands.add_parser("eval", help="evaluate a trained agent",
                             description="Play full episodes with a trained agent and report the returns.")
    ev.add_argument("path", metavar="RUN_DIR|CHECKPOINT", help="a run directory, checkpoint folder or model.safetensors; "
                    "an exported model.onnx (or its folder) plays through onnxruntime; a pretrained backbone artifact "
                    "(or its export) reports its held-out accuracy")
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
    ev.add_argument("--env-kwargs", metavar="KEY=VALUE,...", default=None,
                    help="override env keyword arguments of the run for evaluation (e.g. eval_targets=heldout)")
    return parser


COMPRESS_COMMANDS = {
    "distill": "train a smaller student from a trained agent (DAgger-style, KL to the teacher's actions)",
    "quantize": "int8 weights (and activations where the CPU backend has them) of a trained agent",
    "prune": "global magnitude pruning of a trained agent, gradual over a short fine-tuning phase",
    "export": "the whole acting path of a trained agent as ONNX or TorchScript, checked for parity",
}
"""The compress-and-deploy commands: `rlbase/<name>.py` has `add_arguments(parser)` and `run(args)`."""


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _train(args: argparse.Namespace) -> int:
    from rlbase.agents import get_spec
    from rlbase.lifecycle import TrainingInterrupted, execute, plan, plan_resume

    agent = get_spec(args.algo)
    field_names = {f.name for f in dataclasses.fields(agent.Config)}
    values = {k: v for k, v in vars(args).items() if k in field_names}
    if args.config:
        values = {**read_values_file(args.config, agent.Config), **values}
    p = plan_resume(args.resume, args.algo, values) if args.resume else plan(args.algo, values)
    try:
        if args.print_config:
            print(json.dumps({"algo": args.algo, "config": dataclasses.asdict(p.config)}, indent=2, sort_keys=True))
            return 0
        try:
            metrics = execute(p, announce=_say)
        except TrainingInterrupted as stop:
            how = "terminated (SIGTERM)" if stop.signal == 15 else "interrupted"
            _say(f"\nrlbase: {how} at step {stop.step:,}; checkpoint saved. Continue with: "
                 f"rlbase train {args.algo} --resume {stop.run_dir}")
            return 128 + stop.signal
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


def read_values_file(path: str, config_cls: type) -> dict:
    """Config values from a YAML or JSON file (a mapping of field -> value); a UsageError for an
    unreadable file or an unknown field."""
    from rlbase.config import read_mapping_file

    data = read_mapping_file(path, "--config", "config field -> value")
    unknown = sorted(set(data) - {f.name for f in dataclasses.fields(config_cls)})
    if unknown:
        raise UsageError(f"--config {path}: unknown field(s) {', '.join(map(str, unknown))}")
    return {k: tuple(v) if isinstance(v, list) and k != "env_kwargs" else v for k, v in data.items()}


def _sweep(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from rlbase.space import load_space_file, parse_seeds, parse_space
    from rlbase.sweep import SweepSpec, planned_trials, run_sweep

    if args.resume:
        if args.algo:
            raise UsageError("--resume SWEEP_DIR takes no ALGO or flags: the sweep's own sweep.json says what to run")
        sweep_dir = Path(args.resume)
        spec = SweepSpec.from_file(sweep_dir)
        rows = run_sweep(spec, sweep_dir, address=args.address, resume=True, announce=_say)
    else:
        if not args.algo:
            raise UsageError("rlbase sweep needs ALGO (e.g. rlbase sweep ppo --env CartPole-v1 --seeds 0-4) or --resume")
        from rlbase.agents import get_spec
        from rlbase.config import resolve_config
        from rlbase.space import check_values

        agent = get_spec(args.algo)  # the sweep's driver never imports torch: only its trials do
        field_names = {f.name for f in dataclasses.fields(agent.Config)}
        base = {k: v for k, v in vars(args).items() if k in field_names and k != "seed"}
        if "env_id" not in base:
            raise UsageError(f"--env is required, e.g. rlbase sweep {args.algo} --env CartPole-v1 --seeds 0-4")
        if args.num_samples <= 0 or args.cpus_per_trial <= 0 or args.gpus_per_trial < 0:
            raise UsageError("--num-samples and --cpus-per-trial must be positive, --gpus-per-trial >= 0")
        seeds = parse_seeds(args.seeds)
        space = load_space_file(args.space) if args.space else {}
        parse_space(space, agent.Config)
        check_values(args.algo, base, parse_space(space, agent.Config))
        if args.search == "optuna" and not space:
            raise UsageError("--search optuna needs a --space to search")
        if args.search == "optuna" and "cases" in space:
            raise UsageError("search space 'cases' works with random or grid search, not --search optuna")
        cfg = resolve_config(agent.Config, args.algo, base)
        metric = args.metric or ("eval/mean_reward" if cfg.eval_freq else "rollout/ep_rew_mean")
        name = args.name or f"{cfg.env_id.replace('/', '-').replace(':', '-')}__{args.algo}__sweep__" \
                            f"{time.strftime('%Y%m%d-%H%M%S')}"
        sweep_dir = Path(cfg.log_dir) / name
        if (sweep_dir / "sweep.json").exists():
            raise UsageError(f"sweep directory {sweep_dir} already exists; resume it with rlbase sweep --resume {sweep_dir}")
        sweep_dir.mkdir(parents=True, exist_ok=True)
        spec = SweepSpec(algo=args.algo, base={k: list(v) if isinstance(v, tuple) else v for k, v in base.items()},
                         space=space, seeds=seeds, num_samples=args.num_samples,
                         search=args.search, search_seed=args.search_seed, scheduler=args.scheduler, metric=metric,
                         mode=args.mode, cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
                         name=name)
        from rlbase.safefiles import atomic_write_text

        # Not sort_keys: the order of the space's `cases` is the order of the trials, and a resume
        # draws them again from this file.
        atomic_write_text(sweep_dir / "sweep.json", json.dumps(dataclasses.asdict(spec), indent=1))
        rows = run_sweep(spec, sweep_dir, address=args.address, announce=_say)
    done = sum(row["status"] == "TERMINATED" for row in rows)
    total = max(planned_trials(spec), len(rows))
    best = f", best config in {sweep_dir}/best_config.yaml" if (sweep_dir / "best_config.yaml").exists() else ""
    if done == total:
        _say(f"rlbase: sweep done: {plural(done, 'trial')} finished of {total}; results in {sweep_dir}/results.csv{best}")
        return 0
    failed = sum(row["status"] == "ERROR" for row in rows)
    _say(f"rlbase: sweep {'interrupted' if INTERRUPT.requested else 'not finished'}: {done} of {plural(total, 'trial')} "
         f"finished{f', {failed} failed' if failed else ''}; results so far in {sweep_dir}/results.csv{best}; "
         f"resume with: rlbase sweep --resume {sweep_dir}")
    return 130 if INTERRUPT.requested else 1


def _eval(args: argparse.Namespace) -> int:
    from rlbase.evaluate import evaluate
    from rlbase.utils import resolve_device

    if args.episodes is not None and args.episodes <= 0:
        raise UsageError(f"invalid --episodes: must be positive, got {args.episodes}")
    if args.epsilon is not None and not 0.0 <= args.epsilon <= 1.0:
        raise UsageError(f"invalid --epsilon: must be in [0, 1], got {args.epsilon}")
    if args.num_envs is not None and args.num_envs <= 0:
        raise UsageError(f"invalid --num-envs: must be positive, got {args.num_envs}")
    if not 0 <= args.seed < 2**32:
        raise UsageError(f"invalid --seed: must be in [0, 2**32), got {args.seed}")
    env_kwargs = None
    if args.env_kwargs:
        from rlbase.config import parse_kwargs

        try:
            env_kwargs = parse_kwargs(args.env_kwargs)
        except ValueError:
            raise UsageError(f"--env-kwargs expects KEY=VALUE pairs separated by commas, got {args.env_kwargs!r}") from None
    report = evaluate(args.path, best=args.best, episodes=args.episodes, epsilon=args.epsilon,
                      deterministic=args.deterministic, seed=args.seed, device=resolve_device(args.device),
                      num_envs=args.num_envs, video_dir=args.video, env_kwargs=env_kwargs)
    if args.json:
        print(json.dumps(report))
        return 0
    if report.get("kind") == "backbone":  # a pretrained backbone artifact: held-out metrics
        from rlbase.backbone_compress import print_evaluation

        print_evaluation(report)
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


def _show_warning(message, category, filename, lineno, file=None, line=None, _default=warnings.showwarning):
    """rlbase's own warnings as one `rlbase: warning:` line; others as Python shows them."""
    if issubclass(category, RlbaseWarning):
        print(f"rlbase: warning: {message}", file=sys.stderr, flush=True)
    else:
        _default(message, category, filename, lineno, file, line)


def _interrupt(signum: int, frame: object) -> None:
    """SIGINT: remember it (see rlbase.errors.INTERRUPT), then interrupt as Python does."""
    INTERRUPT.requested = True
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    warnings.showwarning = _show_warning
    threading.excepthook = _thread_exception
    INTERRUPT.requested = False
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous_sigint = signal.signal(signal.SIGINT, _interrupt) if in_main_thread else None
    try:
        return _main(argv)
    finally:
        if previous_sigint is not None:
            signal.signal(signal.SIGINT, previous_sigint)


def _main(argv: list[str] | None) -> int:
    try:
        args = build_parser(argv).parse_args(argv)
        if args.command in ("plot", "report", *COMPRESS_COMMANDS):
            from importlib import import_module

            return import_module(f"rlbase.{args.command}").run(args)
        return {"train": _train, "eval": _eval, "pretrain": _pretrain, "sweep": _sweep}[args.command](args)
    except RlbaseError as exc:
        print(f"rlbase: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("\nrlbase: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # a disk or file fault not caught nearer to where it happened
        where = f" {exc.filename}" if exc.filename else ""
        print(f"rlbase: error:{where} {exc.strerror or exc}", file=sys.stderr)
        return 1


def _thread_exception(args: threading.ExceptHookArgs, _default=threading.excepthook) -> None:
    """TensorBoard's writer thread re-raises a disk fault in the main thread, which reports it in one
    line: do not print the thread's traceback as well."""
    if not issubclass(args.exc_type, OSError):
        _default(args)


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
