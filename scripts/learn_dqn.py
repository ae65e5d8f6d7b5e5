"""Learning check: train DQN with an env's preset on several seeds, evaluate each final policy.

    python scripts/learn_dqn.py --env CartPole-v1 --seeds 0 1 2 3 4 5 6 7 8 9

For each seed: train with the preset (rlbase/presets/dqn.yaml) in-process, then play 20 greedy
evaluation episodes (epsilon 0, evaluation seed 1000 + seed) and print the mean and minimum
return and the training wall-clock. `--threads` sets torch's intra-op threads (1 lets two of these
runs share a 2-core machine without slowing each other down).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from rlbase.agents.dqn import DQNConfig, load_policy, train
from rlbase.config import env_options, resolve_config
from rlbase.envs import make_vec_env
from rlbase.evaluate import play_episodes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="CartPole-v1")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--set", default="{}", help='JSON of config overrides, e.g. \'{"n_step": 1}\'')
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    for seed in args.seeds:
        cfg = resolve_config(DQNConfig, "dqn", {"env_id": args.env, "seed": seed, **json.loads(args.set)})
        env = make_vec_env(cfg.env_id, cfg.num_envs, device, **env_options(cfg))
        start = time.perf_counter()
        metrics = train(cfg, env)
        seconds = time.perf_counter() - start
        env.close()
        q = metrics["q_network"]
        eval_env = make_vec_env(cfg.env_id, min(args.episodes, 10), device, **env_options(cfg, training=False))
        policy = load_policy(cfg, {f"q.{k}": v for k, v in q.state_dict().items()}, eval_env, 0.0)
        with torch.no_grad():
            returns, _ = play_episodes(eval_env, policy, args.episodes, seed=1000 + seed)
        eval_env.close()
        print(json.dumps({"env": cfg.env_id, "seed": seed, "train_seconds": round(seconds, 1),
                          "steps": metrics["global_step"], "eval_mean": sum(returns) / len(returns),
                          "eval_min": min(returns)}), flush=True)


if __name__ == "__main__":
    main()
