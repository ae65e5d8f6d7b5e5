"""`rlbase pretrain TASK`: supervised training of any backbone with a task head.

The data comes from rlbase itself (observations of its own envs labelled from the simulator
state, instructions labelled with what they name) or ships inside a package (scikit-learn's
handwritten digits). Training and validation data are disjoint by construction: env tasks
validate on the eval split's levels, the text task on held-out paraphrases and targets, digits on
a held-out fifth of the images.

The output is a run directory: TensorBoard events and `metrics.jsonl` of the training, the
resolved `config.json`, and the backbone artifact in `backbone/` (safetensors weights, a JSON
spec, the vocabulary for text encoders, the final metrics, the task head and how the data was
generated, so the held-out split can be rebuilt). Agents load it with
`rlbase train ALGO --env ID --backbone-weights DIR` (the run directory or its `backbone/`);
`rlbase quantize | distill | export DIR` compress it and `rlbase eval DIR` measures it again
(rlbase/backbone_compress.py).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from rlbase.config import check, to_json
from rlbase.errors import UsageError

ARTIFACT_DIR = "backbone"


@dataclass
class PretrainConfig:
    """Supervised pretraining of a backbone."""

    task: str = ""
    """What to learn (see `rlbase pretrain --help` for the list)."""
    backbone: str = "auto"
    """Backbone to train: auto (the default for the task's inputs), mlp, nature_cnn, impala_cnn, resnet, vit,
    film_cnn or text."""
    hidden_sizes: tuple[int, ...] = (256, 256)
    """Hidden layer widths of the mlp backbone."""
    activation: str = "relu"
    """Activation of the mlp backbone: relu or tanh."""
    env_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Keyword arguments of the env that generates the data (e.g. obs_mode=pixels,size=11), as KEY=VALUE,..."""
    train_samples: int = 50_000
    """Training examples to generate (digits: at most the 1,437 training images)."""
    val_samples: int = 5_000
    """Held-out validation examples (digits: at most the 360 held-out images)."""
    epochs: int = 10
    """Passes over the training data."""
    batch_size: int = 128
    """Examples per gradient step."""
    learning_rate: float = 1e-3
    """AdamW learning rate (cosine-annealed to 0 with a short warm-up)."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""
    seed: int = 0
    """Seed for data generation, initialisation and shuffling."""
    device: str = "auto"
    """auto (CUDA when present, else CPU), cpu or cuda."""
    torch_threads: int = 0
    """Torch intra-op threads (0: torch's default)."""
    out: str = ""
    """Output run directory (default: pretrained/<task>__<backbone>__<seed>)."""


def validate(cfg: PretrainConfig) -> None:
    from rlbase.backbones import ACTIVATIONS

    if cfg.task not in tasks():  # the positional TASK, not a flag
        raise UsageError(f"unknown task {cfg.task!r}; choose from {', '.join(tasks())}")
    check(cfg.train_samples > 0, "train_samples", f"must be positive, got {cfg.train_samples}")
    check(cfg.val_samples > 0, "val_samples", f"must be positive, got {cfg.val_samples}")
    check(cfg.epochs > 0, "epochs", f"must be positive, got {cfg.epochs}")
    check(cfg.batch_size > 0, "batch_size", f"must be positive, got {cfg.batch_size}")
    check(cfg.learning_rate > 0, "learning_rate", f"must be positive, got {cfg.learning_rate}")
    check(cfg.weight_decay >= 0, "weight_decay", f"must be >= 0, got {cfg.weight_decay}")
    check(cfg.torch_threads >= 0, "torch_threads", f"must be >= 0, got {cfg.torch_threads}")
    check(cfg.activation in ACTIVATIONS, "activation", f"choose from {', '.join(ACTIVATIONS)}, got {cfg.activation!r}")


def tasks() -> dict[str, str]:
    """Task name -> one-line description."""
    from rlbase.datasets import TASKS

    return dict(TASKS)


class TaskHead(nn.Module):
    """Backbone features -> logits of each classification head (concatenated), or regression outputs."""

    def __init__(self, in_dim: int, outputs: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, 256), nn.ReLU(), nn.Linear(256, outputs))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


class TaskModel(nn.Module):
    """A backbone with its task head: observations -> the head's outputs (what held-out accuracy
    measures, what `rlbase quantize` and `rlbase export` convert as one network)."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(obs))


def data_description(cfg: PretrainConfig) -> dict[str, Any]:
    """How the data was generated (kept in the artifact): enough to rebuild the held-out split."""
    return {"task": cfg.task, "env_kwargs": dict(cfg.env_kwargs), "seed": cfg.seed,
            "train_samples": cfg.train_samples, "val_samples": cfg.val_samples}


def make_split(data: dict[str, Any], split: str, device: torch.device | str = "cpu",
               num_samples: int | None = None) -> Any:
    """The `train` or held-out (`eval`) split `rlbase pretrain` used, regenerated from a
    `data_description`; `num_samples` overrides the count (a larger train split extends the same
    sequence). Env and text tasks seed the held-out split seed + 1 (its levels or paraphrases differ
    anyway); digits split one permutation seeded by seed, so both splits take the same seed (another
    permutation's held-out fifth would be mostly training images)."""
    from rlbase.datasets import make_dataset

    count = num_samples or data["train_samples" if split == "train" else "val_samples"]
    seed = data["seed"] + (split == "eval" and data["task"] != "digits")
    try:
        return make_dataset(data["task"], split, count, seed, data.get("env_kwargs") or {}, device)
    except ValueError as exc:
        raise UsageError(f"pretrain {data['task']}: {exc}") from None


def head_sizes(data: Any) -> list[int]:
    """Classes per head: one entry for single-label data, several for factored labels (colour, object)."""
    if data.kind == "regression":
        return [int(data.targets.shape[1])]
    n = data.num_classes
    return list(n) if isinstance(n, (list, tuple)) else [int(n)]


def task_loss(data: Any, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    if data.kind == "regression":
        return F.mse_loss(outputs, targets)
    targets = targets.view(targets.shape[0], -1)
    loss = outputs.new_zeros(())
    for i, logits in enumerate(outputs.split(head_sizes(data), dim=1)):
        loss = loss + F.cross_entropy(logits, targets[:, i])
    return loss


@torch.no_grad()
def evaluate_task(backbone: nn.Module, head: nn.Module, data: Any, batch_size: int = 1024) -> dict[str, float]:
    """Held-out metrics: accuracy (all heads right) and per-head accuracy, or MSE, R^2 and per-target MAE."""
    backbone.eval()
    head.eval()
    outputs = torch.cat([head(backbone(data.inputs[i:i + batch_size]))
                         for i in range(0, len(data.targets), batch_size)])
    backbone.train()
    head.train()
    return task_metrics(data, outputs)


def task_metrics(data: Any, outputs: torch.Tensor) -> dict[str, float]:
    """`evaluate_task`'s metrics of a split's `outputs` (N, head outputs), however they were computed."""
    outputs = outputs.to(data.targets.device)
    if data.kind == "regression":
        err = outputs - data.targets
        var = data.targets.var(0, unbiased=False).clamp_min(1e-12)
        metrics = {"mse": float(err.pow(2).mean()), "r2": float((1 - err.pow(2).mean(0) / var).mean())}
        for i, name in enumerate(data.target_names):
            metrics[f"mae/{name}"] = float(err[:, i].abs().mean())
        return metrics
    targets = data.targets.view(data.targets.shape[0], -1)
    sizes = head_sizes(data)
    correct = torch.stack([logits.argmax(1) == targets[:, i]
                           for i, logits in enumerate(outputs.split(sizes, dim=1))], dim=1)
    metrics = {"accuracy": float(correct.all(1).float().mean())}
    if len(sizes) > 1:
        for i, name in enumerate(data.target_names):
            metrics[f"accuracy/{name}"] = float(correct[:, i].float().mean())
    return metrics


def cosine_rate(base: float, step: int, total: int, warmup: int) -> float:
    """The learning rate at `step` of `total`: a linear warm-up over `warmup` steps, then cosine to 0."""
    return base * min(1.0, (step + 1) / max(1, warmup)) * 0.5 * (1 + math.cos(math.pi * step / total))


def pretrain(cfg: PretrainConfig, progress: bool | None = None) -> dict[str, Any]:
    """Generate the data, train backbone + head, write the run directory; returns the final metrics."""
    from rlbase.backbones import build_backbone, check_backbone
    from rlbase.backbones.artifact import save_backbone
    from rlbase.logger import RunLogger
    from rlbase.utils import intra_op_threads, resolve_device, seed_everything

    validate(cfg)
    device = resolve_device(cfg.device)
    threads = cfg.torch_threads or torch.get_num_threads()
    with intra_op_threads(threads):
        train = make_split(data_description(cfg), "train", device)
        val = make_split(data_description(cfg), "eval", device)
        name = check_backbone(cfg.backbone, train.observation_space)
        cfg = dataclasses.replace(cfg, backbone=name)
        out = Path(cfg.out or f"pretrained/{cfg.task}__{name}__{cfg.seed}")
        if (out / ARTIFACT_DIR).exists():
            raise UsageError(f"{out} already holds a pretrained backbone; choose another --out")
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(to_json(cfg))

        seed_everything(cfg.seed)
        backbone = build_backbone(name, train.observation_space, cfg.hidden_sizes, cfg.activation).to(device)
        head = TaskHead(backbone.out_dim, sum(head_sizes(train))).to(device)
        params = list(backbone.parameters()) + list(head.parameters())
        # AdamW; weight decay on weight matrices and kernels only, not on biases and norm gains.
        groups = [{"params": [p for p in params if p.dim() > 1], "weight_decay": cfg.weight_decay},
                  {"params": [p for p in params if p.dim() <= 1], "weight_decay": 0.0}]
        optimizer = torch.optim.AdamW(groups, lr=cfg.learning_rate)

        n = len(train.targets)
        steps_per_epoch = max(1, n // cfg.batch_size)
        total = steps_per_epoch * cfg.epochs
        warmup = min(200, total // 10)
        generator = torch.Generator(device=device).manual_seed(cfg.seed)
        logger = RunLogger(out, total * cfg.batch_size, hparams=json.loads(to_json(cfg)), progress=progress)
        print(f"rlbase: pretraining {name} on {cfg.task} ({n} training / {len(val.targets)} held-out examples, "
              f"{device}); run dir {out}", file=sys.stderr)
        start = time.perf_counter()
        step = 0
        metrics: dict[str, float] = {}
        try:
            for epoch in range(cfg.epochs):
                order = torch.randperm(n, device=device, generator=generator)
                loss_sum = torch.zeros((), device=device)
                for i in range(steps_per_epoch):
                    lr = cosine_rate(cfg.learning_rate, step, total, warmup)
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                    index = order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
                    loss = task_loss(train, head(backbone(train.inputs[index])), train.targets[index])
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    nn.utils.clip_grad_norm_(params, 5.0)
                    optimizer.step()
                    loss_sum += loss.detach()
                    step += 1
                    logger.progress(step * cfg.batch_size)
                metrics = {f"val/{k}": v for k, v in evaluate_task(backbone, head, val).items()}
                metrics.update({"train/loss": float(loss_sum) / steps_per_epoch, "train/epoch": epoch + 1,
                                "train/learning_rate": lr})
                logger.log(step * cfg.batch_size, metrics)
        finally:
            logger.close()
        metrics["train/seconds"] = time.perf_counter() - start
        train_metrics = evaluate_task(backbone, head, train)
        metrics.update({f"train/{k}": v for k, v in train_metrics.items()})
        save_backbone(out / ARTIFACT_DIR, backbone.cpu(), name, train.observation_space, cfg.hidden_sizes,
                      cfg.activation, task=cfg.task, metrics=metrics, tokenizer=getattr(train, "tokenizer", None),
                      head=head.cpu(), data=data_description(cfg))
    return {"out": str(out), "backbone": name, "metrics": metrics}
