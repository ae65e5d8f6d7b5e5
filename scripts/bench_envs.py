"""Native env throughput: steps/s of every `rlbase/...` env at several batch sizes, next to Gymnasium.

Run from the repository root:

    python scripts/bench_envs.py                                  # every native env, CPU
    python scripts/bench_envs.py --envs rlbase/CartPole-v1 --seconds 0.5
    python scripts/bench_envs.py --device cuda --sizes 1024 16384 65536
    python scripts/bench_envs.py --threads 1 --json envs.json     # on a machine shared with other jobs

For each id in `rlbase.envs.NATIVE_ENVS` whose module and classes import (ids still being written
are skipped with a note):

1. native: the batched env (`make_vec_env`'s class) at each `--sizes` batch size on `--device`.
   Random actions are drawn beforehand on the device (64 batches, cycled), so action sampling is
   not timed; after a warm-up the env steps for `--seconds` of wall time (on CUDA, synchronised
   at the end of each timed chunk). steps/s counts env steps summed over the batch.
2. Gymnasium's `SyncVectorEnv` over the single-instance env (`gymnasium.make(id)`, the native
   code on a batch of one), and over Gymnasium's own version of the env where there is one
   (CartPole-v1, Pendulum-v1), at 1 and 64 envs only (it steps its envs one after another in
   Python). Gymnasium's CartPole-v1 is always measured as a reference point. Actions are sampled
   beforehand too.
3. The speed-up: native at 4096 envs over the best SyncVectorEnv at 64 envs of the same env.
4. For envs with a level generator (a procedural reset from per-episode level seeds), resets/s at
   4096 envs: `start_next_episode` on all envs, repeatedly (envs reset per second).

Timings on a shared machine are noisy: the load average is printed at the start and the end.
With torch's default threads on a machine whose cores are busy, multi-threaded kernels can slow
down several times; compare runs made with the same --threads.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import platform
import sys
import time
from typing import Any, Callable

import gymnasium as gym
import torch

from benchlib import fmt_rate, git_revision, load_average

DEFAULT_SIZES = (1, 64, 1024, 4096, 16384)
SYNC_SIZES = (1, 64)
RESET_SIZE = 4096
ACTION_BATCHES = 64
REFERENCE_ID = "CartPole-v1"  # Gymnasium's own, always measured


def load_native(env_id: str) -> tuple[type | None, str]:
    """The batched class of a native id, or None and why not (module or class not there yet)."""
    from rlbase.envs import NATIVE_ENVS

    module, batched, single, _ = NATIVE_ENVS[env_id]
    try:
        mod = importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - a module someone is still writing may fail in any way
        return None, f"module {module} does not import ({type(exc).__name__}: {exc})"
    missing = [name for name in (batched, single) if not hasattr(mod, name)]
    if missing:
        return None, f"{module} has no {', '.join(missing)} yet"
    return getattr(mod, batched), ""


def has_level_generator(cls: type) -> bool:
    """Whether the env builds levels from per-episode level seeds (a procedural reset).

    An explicit class attribute `procedural` wins; otherwise look for the use of level seeds
    or `num_levels` in the env's own code (not in the NativeVecEnv base class).
    """
    from rlbase.envs.native import NativeVecEnv

    flag = getattr(cls, "procedural", None)
    if flag is not None:
        return bool(flag)
    for klass in cls.__mro__:
        if klass is NativeVecEnv or not issubclass(klass, NativeVecEnv):
            continue
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        if "level_seeds" in source or "self.num_levels" in source:
            return True
    return False


def random_actions(space: gym.spaces.Space, num_envs: int, device: torch.device, seed: int = 0) -> list[torch.Tensor]:
    """ACTION_BATCHES batches of uniform random actions for `num_envs` envs, made on the device."""
    gen = torch.Generator(device=device).manual_seed(seed)
    out = []
    for _ in range(ACTION_BATCHES):
        if isinstance(space, gym.spaces.Discrete):
            a = torch.randint(int(space.n), (num_envs,), generator=gen, device=device) + int(space.start)
        elif isinstance(space, gym.spaces.MultiDiscrete):
            nvec = torch.as_tensor(space.nvec, device=device)
            u = torch.rand((num_envs, *nvec.shape), generator=gen, device=device)
            a = (u * nvec).long().minimum(nvec - 1)
        elif isinstance(space, gym.spaces.Box):
            low = torch.as_tensor(space.low, dtype=torch.float32, device=device)
            high = torch.as_tensor(space.high, dtype=torch.float32, device=device)
            u = torch.rand((num_envs, *space.shape), generator=gen, device=device)
            a = (low + (high - low) * u).to(torch.float32)
        else:
            raise TypeError(f"no random actions for {type(space).__name__} action spaces")
        out.append(a)
    return out


def run_for(step: Callable[[int], None], seconds: float, sync: Callable[[], None], warmup: int = 10) -> float:
    """Call step(i) for i = 0, 1, ... for about `seconds` of wall time after `warmup` calls; steps/call per second.

    Steps run in chunks (growing until a chunk takes ~1/10 of the time) with a sync after each,
    so on CUDA the clock covers finished work and the clock is read rarely.
    """
    for i in range(warmup):
        step(i)
    sync()
    calls, chunk = 0, 1
    start = time.perf_counter()
    while True:
        for _ in range(chunk):
            step(calls)
            calls += 1
        sync()
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return calls / elapsed
        per_call = elapsed / calls
        chunk = max(1, min(chunk * 2, int(seconds / 10 / per_call), int((seconds - elapsed) / per_call) + 1))


def bench_native(env_id: str, num_envs: int, device: torch.device, seconds: float) -> float:
    from rlbase.envs import make_native_vec_env

    env = make_native_vec_env(env_id, num_envs, device)
    env.reset(seed=0)
    actions = random_actions(env.single_action_space, num_envs, device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    rate = run_for(lambda i: env.step(actions[i % ACTION_BATCHES]), seconds, sync) * num_envs
    env.close()
    return rate


def bench_resets(env_id: str, num_envs: int, device: torch.device, seconds: float) -> float:
    from rlbase.envs import make_native_vec_env

    env = make_native_vec_env(env_id, num_envs, device)
    env.reset(seed=0)
    everyone = torch.ones(num_envs, dtype=torch.bool, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    rate = run_for(lambda i: env.start_next_episode(everyone), seconds, sync) * num_envs
    env.close()
    return rate


def bench_sync_vector(gym_id: str, num_envs: int, seconds: float) -> float:
    envs = gym.vector.SyncVectorEnv([lambda: gym.make(gym_id) for _ in range(num_envs)])
    envs.reset(seed=0)
    envs.action_space.seed(0)
    actions = [envs.action_space.sample() for _ in range(ACTION_BATCHES)]
    rate = run_for(lambda i: envs.step(actions[i % ACTION_BATCHES]), seconds, lambda: None) * num_envs
    envs.close()
    return rate


def gymnasium_counterpart(env_id: str) -> str | None:
    """Gymnasium's own id for a native env, if it has one (rlbase/CartPole-v1 -> CartPole-v1)."""
    name = env_id.split("/", 1)[-1]
    return name if name in gym.registry else None


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    """A markdown table; columns whose cells are all numbers (or "—") are right-aligned."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    numeric = [bool(rows) and all(r[i][:1].isdigit() or r[i] == "—" for r in rows) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric)) + " |"

    rule = "|" + "|".join("-" * (w + 1) + (":" if num else "-") for w, num in zip(widths, numeric)) + "|"
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from rlbase.envs import NATIVE_ENVS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--envs", nargs="+", metavar="ID", help="native ids to run (default: all); the "
                        "rlbase/ prefix may be left out")
    parser.add_argument("--sizes", nargs="+", type=int, default=list(DEFAULT_SIZES), metavar="N")
    parser.add_argument("--seconds", type=float, default=2.0, help="wall time per measurement (default 2)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's default)")
    parser.add_argument("--json", metavar="OUT", help="also write the results as JSON")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    ids = list(NATIVE_ENVS)
    if args.envs:
        wanted = [e if e in NATIVE_ENVS else f"rlbase/{e}" for e in args.envs]
        unknown = [e for e in wanted if e not in NATIVE_ENVS]
        if unknown:
            parser.error(f"unknown native id(s) {', '.join(unknown)}; known: {', '.join(NATIVE_ENVS)}")
        ids = wanted
    sizes = sorted(set(args.sizes))
    columns = sorted(set(sizes) | set(SYNC_SIZES))  # SyncVectorEnv always runs at 1 and 64 envs

    print(f"# Native env throughput (steps/s summed over envs; {args.seconds:g} s per point)\n")
    print(f"rlbase {git_revision()}, torch {torch.__version__}, gymnasium {gym.__version__}, "
          f"python {platform.python_version()}, device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
          + f", torch threads {torch.get_num_threads()}, load average {load_average()}\n")

    results: dict[str, Any] = {
        "meta": {"revision": git_revision(), "torch": torch.__version__, "gymnasium": gym.__version__,
                 "device": str(device), "threads": torch.get_num_threads(), "seconds": args.seconds,
                 "load_average_start": load_average()},
        "steps_per_s": [], "resets_per_s": [], "speedup": [], "skipped": {},
    }
    record = results["steps_per_s"].append
    rows: list[list[str]] = []
    ratio_rows: list[list[str]] = []
    reset_rows: list[list[str]] = []
    notes: list[str] = []

    def cell(rate: float | None) -> str:
        return "—" if rate is None else fmt_rate(rate)

    def sync_row(label: str, gym_id: str) -> dict[int, float]:
        rates = {}
        for n in SYNC_SIZES:
            rates[n] = bench_sync_vector(gym_id, n, args.seconds)
            record({"env": gym_id, "backend": "gymnasium SyncVectorEnv", "num_envs": n, "steps_per_s": rates[n]})
        rows.append([label, f"SyncVectorEnv({gym_id})"] + [cell(rates.get(n)) for n in columns])
        return rates

    for env_id in ids:
        cls, why = load_native(env_id)
        if cls is None:
            notes.append(f"skipped {env_id}: {why}")
            results["skipped"][env_id] = why
            print(f"note: skipped {env_id}: {why}", flush=True)
            continue
        native: dict[int, float] = {}
        for n in sizes:
            try:
                native[n] = bench_native(env_id, n, device, args.seconds)
            except Exception as exc:  # noqa: BLE001 - report it and go on with the other points
                notes.append(f"{env_id} at {n} envs failed: {type(exc).__name__}: {exc}")
                continue
            record({"env": env_id, "backend": "native", "num_envs": n, "steps_per_s": native[n]})
            print(f"  {env_id:28s} native        {n:6d} envs  {fmt_rate(native[n]):>14s} steps/s", flush=True)
        rows.append([env_id, f"native ({device.type})"] + [cell(native.get(n)) for n in columns])
        best_sync = sync_row(env_id, env_id)
        counterpart = gymnasium_counterpart(env_id)
        if counterpart:
            own = sync_row(env_id, counterpart)
            best_sync = {n: max(best_sync[n], own[n]) for n in SYNC_SIZES}
        if 4096 in native:
            ratio = native[4096] / best_sync[64]
            ratio_rows.append([env_id, fmt_rate(native[4096]), fmt_rate(best_sync[64]), f"{ratio:,.0f}x"])
            results["speedup"].append({"env": env_id, "native_4096": native[4096], "sync_64_best": best_sync[64],
                                       "ratio": ratio})
        if has_level_generator(cls):
            rate = bench_resets(env_id, RESET_SIZE, device, args.seconds)
            reset_rows.append([env_id, str(RESET_SIZE), fmt_rate(rate)])
            results["resets_per_s"].append({"env": env_id, "num_envs": RESET_SIZE, "resets_per_s": rate})

    if not any(row[1].startswith(f"SyncVectorEnv({REFERENCE_ID})") for row in rows):
        sync_row(f"(reference) {REFERENCE_ID}", REFERENCE_ID)

    print()
    print(markdown_table(["env", "backend"] + [f"{n} envs" for n in columns], rows))
    if ratio_rows:
        print("\nNative at 4096 envs vs the best Gymnasium SyncVectorEnv at 64 envs of the same env:\n")
        print(markdown_table(["env", "native@4096", "SyncVectorEnv@64 (best)", "ratio"], ratio_rows))
    if reset_rows:
        print("\nLevel generation (`start_next_episode` on all envs):\n")
        print(markdown_table(["env", "envs", "resets/s"], reset_rows))
    for note in notes:
        print(f"\nnote: {note}", end="")
    results["meta"]["load_average_end"] = load_average()
    print(f"\n\nload average at the end: {load_average()}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
        print(f"wrote {args.json}")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
