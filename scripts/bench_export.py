"""ONNX export of trained agents: parity with torch and CPU latency, onnxruntime vs torch eager,
measured in the same run.

    python scripts/bench_export.py RUN [RUN ...] [--batches 1,256] [--seconds 4] [--threads 1] [--seeds 0,1,2]

For each run (a run directory or checkpoint, as `rlbase export` takes): the acting path
(`Agent.acting_net`) is exported with `rlbase.export.export_onnx` exactly as the command does, and
for each `--seeds` seed the parity check runs on `--parity-samples` observations from a rollout of
the policy on the eval split (max |outputs diff|, max |actions diff|, identical discrete actions).
Then both runtimes time one forward pass per batch size on the same observations: torch eager
(`torch.inference_mode`, the module as `rlbase eval` runs it) and `InferenceSession.run` with the
numpy arrays prepared beforehand (CPU tensors convert to numpy without a copy; the torch side gets
its tensors prepared too). Both use `--threads` intra-op threads. Each figure is the fastest of five
timing windows (benchlib.fastest_rate), so a burst of load from other processes lowers neither;
the ratio torch / onnxruntime > 1 means onnxruntime is faster.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

from benchlib import fastest_rate, git_revision, load_average, print_table


def measure(path: str, batches: list[int], seeds: list[int], samples: int, seconds: float) -> dict:
    import onnxruntime as ort
    import torch

    from rlbase.config import make_env
    from rlbase.evaluate import load_trained
    from rlbase.deploy import input_names, onnx_session
    from rlbase.export import check_parity, collect_observations, export_onnx
    from rlbase.obs import take

    cpu = torch.device("cpu")
    trained = load_trained(path, cpu)
    cfg = trained.config
    env = make_env(cfg, 16, cpu, training=False)
    try:
        net = trained.agent.acting_net(cfg, trained.tensors, env.single_observation_space, env.single_action_space,
                                       cpu)
        names = input_names(env.single_observation_space)
        pool = collect_observations(net, env, max(samples, max(batches)), seeds[0])
        data = export_onnx(net, take(pool, slice(0, 2)), names, 18, {"rlbase_format": "bench"})
        session = onnx_session(data, "the exported model")
        parity = []
        for seed in seeds:
            obs = collect_observations(net, env, samples, seed)
            parity.append({"seed": seed, **check_parity(net, session, obs, names, net.kind)})
    finally:
        env.close()
    latency = []
    for batch in batches:
        obs = take(pool, slice(0, batch))
        feed = {name: x.numpy() for name, x in zip(names, obs.values() if isinstance(obs, dict) else (obs,))}

        def torch_forward(_: int, obs=obs) -> None:
            with torch.inference_mode():
                net(obs)

        def ort_forward(_: int, feed=feed) -> None:
            session.run(["outputs", "actions"], feed)

        torch_rate = fastest_rate(torch_forward, 1, seconds)[0]  # forward passes per second
        ort_rate = fastest_rate(ort_forward, 1, seconds)[0]
        latency.append({"batch": batch, "torch_us": 1e6 / torch_rate, "onnxruntime_us": 1e6 / ort_rate,
                        "torch_over_onnxruntime": ort_rate / torch_rate})
    return {"run": path, "algo": trained.agent.name, "env_id": cfg.env_id, "kind": net.kind,
            "parameters": sum(p.numel() for p in net.parameters()), "onnx_bytes": len(data),
            "onnxruntime": ort.__version__, "parity": parity, "latency": latency}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run directories or checkpoints")
    parser.add_argument("--batches", default="1,256", help="batch sizes timed (default: 1,256)")
    parser.add_argument("--seeds", default="0,1,2", help="seeds of the parity rollouts (default: 0,1,2)")
    parser.add_argument("--parity-samples", type=int, default=1000,
                        help="observations per parity check (default: 1000)")
    parser.add_argument("--seconds", type=float, default=4.0, help="timing seconds per runtime and batch (default: 4)")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads of both runtimes (default: 1)")
    parser.add_argument("--json", metavar="FILE", default=None, help="also write the results as JSON")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)  # rlbase.export's sessions use torch's thread count
    batches = [int(b) for b in args.batches.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"# python scripts/bench_export.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    print(f"# git {git_revision()}, torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{args.threads} thread(s), load average {load_average()}")
    results = [measure(run, batches, seeds, args.parity_samples, args.seconds) for run in args.runs]
    rows = []
    for r in results:
        worst = max(p["max_abs_diff_outputs"] for p in r["parity"])
        worst_actions = max(p["max_abs_diff_actions"] for p in r["parity"])
        same = [p["identical_actions"] for p in r["parity"] if "identical_actions" in p]
        rows.append([f"{r['algo']} {r['env_id']}", r["kind"], f"{r['parameters']:,}", f"{r['onnx_bytes']:,}",
                     f"{len(r['parity'])}x{r['parity'][0]['samples']}", f"{worst:.2g}", f"{worst_actions:.2g}",
                     f"{min(same):.1%}" if same else "-"])
    print("\nparity, torch vs onnxruntime (worst over the seeds)")
    print_table(["policy", "kind", "params", "onnx bytes", "seeds x obs", "max |out diff|", "max |act diff|",
                 "identical"], rows)
    print(f"\nCPU latency per forward pass (fastest of 5 windows, {args.threads} thread(s))")
    print_table(["policy", "batch", "torch eager us", "onnxruntime us", "torch / onnxruntime"],
                [[f"{r['algo']} {r['env_id']}", str(t["batch"]), f"{t['torch_us']:.1f}", f"{t['onnxruntime_us']:.1f}",
                  f"{t['torch_over_onnxruntime']:.2f}x"] for r in results for t in r["latency"]])
    if args.json:
        Path(args.json).write_text(json.dumps({"argv": argv if argv is not None else sys.argv[1:],
                                               "results": results}, indent=2))


if __name__ == "__main__":
    main()
