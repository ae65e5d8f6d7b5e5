"""Adam and gradient-norm clipping for the agents, without torch.optim's start-up and per-step costs.

`torch.optim.Adam` gives the same update, but constructing any `torch.optim` optimizer imports
`torch._dynamo` (once per process: a third of a whole CartPole training run), and its fused step
reads each parameter's step counter back to the host. Measured with torch 2.13.0 on a 2-core CPU,
whole processes, three runs each:

    time python -c "import torch; p = [torch.nn.Parameter(torch.zeros(3))]; torch.optim.Adam(p, lr=1e-3, fused=True)"
    time python -c "import torch; from rlbase.optim import Adam; p = [torch.nn.Parameter(torch.zeros(3))]; Adam(p, lr=1e-3)"
    time python -c "import torch"

2.66-2.79 s, 1.44-1.52 s and 1.26-1.40 s: torch.optim.Adam(fused=True) costs 1.2-1.3 s more
(`python -X importtime` shows torch._dynamo, 1.08 s, imported by the constructor; A2C's default
RMSprop is a torch.optim optimiser and pays it). Here:

- `Adam` keeps one step counter per parameter group and runs torch's fused Adam kernel
  (`torch._fused_adam_`, CPU and CUDA) where this torch build has it for the device, else the
  same update as a few `torch._foreach_*` ops. `state_dict()` / `load_state_dict()` use
  torch.optim.Adam's format, so checkpoints written with either load into both.
- `clip_grad_norm_` is `torch.nn.utils.clip_grad_norm_` for one device in four ops.

tests/test_optim.py checks both against torch's own, step by step.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import torch

# torch.optim.Adam's param_group keys (torch 2.x), so a state dict from one loads into the other.
_TORCH_GROUP_DEFAULTS = {"weight_decay": 0.0, "amsgrad": False, "maximize": False, "foreach": None,
                         "capturable": False, "differentiable": False, "decoupled_weight_decay": False}


class Adam:
    """Adam (Kingma & Ba, 2015) with torch.optim.Adam's defaults and update rule (no weight decay).

    `param_groups` is a list of dicts, each with its `params` and `lr` (plus any extra keys given,
    such as rlbase's `lr_scale`); changing a group's `lr` takes effect at the next `step()`.
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, fused: bool | None = None):
        if lr < 0 or eps < 0 or not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"invalid Adam hyperparameters: lr={lr}, betas={betas}, eps={eps}")
        groups = list(params)
        if not groups:
            raise ValueError("Adam got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        self.defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, **_TORCH_GROUP_DEFAULTS}
        self.param_groups: list[dict[str, Any]] = []
        seen: set[int] = set()
        for group in groups:
            params_list = list(group["params"])
            if any(id(p) in seen for p in params_list):
                raise ValueError("a parameter appears in more than one Adam parameter group")
            seen.update(id(p) for p in params_list)
            self.param_groups.append({**self.defaults, **group, "params": params_list})
        self._use_fused = fused
        # Per group: the step count (on the host, and as the float32 device scalar the fused kernel
        # reads) and the moments.
        self._counts = [0] * len(self.param_groups)
        self._steps: list[torch.Tensor | None] = [None] * len(self.param_groups)
        self._moments: list[tuple[list[torch.Tensor], list[torch.Tensor]] | None] = [None] * len(self.param_groups)

    # ---- stepping -----------------------------------------------------------------------------
    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if set_to_none:
                    p.grad = None
                elif p.grad is not None:
                    p.grad.zero_()

    def _init_group(self, index: int) -> None:
        params = self.param_groups[index]["params"]
        self._steps[index] = torch.zeros((), dtype=torch.float32, device=params[0].device)
        self._moments[index] = ([torch.zeros_like(p, memory_format=torch.preserve_format) for p in params],
                                [torch.zeros_like(p, memory_format=torch.preserve_format) for p in params])

    @torch.no_grad()
    def step(self) -> None:
        for index, group in enumerate(self.param_groups):
            if self._moments[index] is None:
                self._init_group(index)
            exp_avgs, exp_avg_sqs = self._moments[index]
            live = [i for i, p in enumerate(group["params"]) if p.grad is not None]
            if not live:
                continue
            # A parameter without a gradient keeps its moments and its value, as in torch.optim. The
            # step count is the group's: it differs from torch's per-parameter counts only for a
            # parameter that misses gradients on some steps, which the agents' networks never do.
            params = [group["params"][i] for i in live]
            grads = [p.grad for p in params]
            m = [exp_avgs[i] for i in live]
            v = [exp_avg_sqs[i] for i in live]
            self._counts[index] += 1
            beta1, beta2 = group["betas"]
            if self._fused_kernel(params[0]):
                step = self._steps[index]
                step += 1
                torch._fused_adam_(params, grads, m, v, [], [step] * len(params), lr=float(group["lr"]),
                                   beta1=beta1, beta2=beta2, weight_decay=0.0, eps=group["eps"],
                                   amsgrad=False, maximize=False)
            else:
                _foreach_adam(params, grads, m, v, self._counts[index], group["lr"], beta1, beta2, group["eps"])

    def _fused_kernel(self, param: torch.Tensor) -> bool:
        if self._use_fused is None:
            self._use_fused = _has_fused_adam(param)
        return self._use_fused

    # ---- torch.optim.Adam's state-dict format ---------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state: dict[int, dict[str, torch.Tensor]] = {}
        groups = []
        offset = 0
        for index, group in enumerate(self.param_groups):
            count = len(group["params"])
            if self._moments[index] is not None:
                exp_avgs, exp_avg_sqs = self._moments[index]
                for i in range(count):
                    state[offset + i] = {"step": torch.tensor(float(self._counts[index])), "exp_avg": exp_avgs[i],
                                         "exp_avg_sq": exp_avg_sqs[i]}
            # `fused` says which kernel made the moments, so torch.optim.Adam continues with the same one.
            groups.append({**{k: v for k, v in group.items() if k != "params"},
                           "fused": self._fused_kernel(group["params"][0]),
                           "params": list(range(offset, offset + count))})
            offset += count
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict of this class or of torch.optim.Adam (same groups, same parameter shapes)."""
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"the saved optimizer has {len(saved_groups)} parameter groups, this one "
                             f"{len(self.param_groups)}")
        state = {int(k): v for k, v in state_dict["state"].items()}
        for index, (group, saved) in enumerate(zip(self.param_groups, saved_groups)):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(f"parameter group {index} has {len(saved['params'])} parameters in the saved "
                                 f"optimizer and {len(group['params'])} here")
            for key, value in saved.items():
                if key != "params":
                    group[key] = tuple(value) if key == "betas" else value
            entries = [state.get(int(i)) for i in saved["params"]]
            if all(entry is None for entry in entries):
                self._steps[index] = self._moments[index] = None
                self._counts[index] = 0
                continue
            if any(entry is None for entry in entries):
                raise ValueError(f"parameter group {index}: the saved optimizer has state for only some parameters")
            params = group["params"]
            for p, entry in zip(params, entries):
                if tuple(entry["exp_avg"].shape) != tuple(p.shape) or tuple(entry["exp_avg_sq"].shape) != tuple(p.shape):
                    raise ValueError(f"saved Adam moments of shape {tuple(entry['exp_avg'].shape)} do not fit a "
                                     f"parameter of shape {tuple(p.shape)}")
            steps = {float(entry["step"]) for entry in entries}
            if len(steps) != 1:
                raise ValueError(f"parameter group {index}: the saved step counts differ ({sorted(steps)})")
            self._counts[index] = int(steps.pop())
            self._steps[index] = torch.tensor(float(self._counts[index]), dtype=torch.float32, device=params[0].device)
            # In each parameter's own layout (channels_last convolutions): the fused kernel takes
            # moments only with their parameter's strides, and saved tensors come back contiguous.
            self._moments[index] = (
                [torch.empty_like(p, memory_format=torch.preserve_format).copy_(entry["exp_avg"])
                 for p, entry in zip(params, entries)],
                [torch.empty_like(p, memory_format=torch.preserve_format).copy_(entry["exp_avg_sq"])
                 for p, entry in zip(params, entries)])


# What the agents and the run's checkpoints accept as an optimiser: this Adam, or a torch.optim one
# (A2C's RMSprop). Both have param_groups, zero_grad, step, state_dict and load_state_dict.
Optimizer = Adam | torch.optim.Optimizer


def annealed_lr(cfg: Any, rollouts: int, num_rollouts: int, batch: int) -> float:
    """The learning rate of rollout number `rollouts` (of `num_rollouts`, `batch` env steps each):
    `cfg.learning_rate`, annealed linearly to 0 at the last rollout with `cfg.anneal_lr`, the
    annealing starting at env step `cfg.lr_restart_step` (0: the run's start; a resume may move it,
    as `rlbase prune` does so that its fine-tuning does not inherit a learning rate annealed to ~0)."""
    if not cfg.anneal_lr:
        return cfg.learning_rate
    start = min(cfg.lr_restart_step // batch, num_rollouts - 1)
    done = max(0, rollouts - start) / max(1, num_rollouts - start)
    return cfg.learning_rate * max(0.0, 1.0 - done)


def make_adam(params: Iterable[Any], lr: float, eps: float) -> Adam:
    """The agents' Adam; `params` is a list of parameters or of parameter groups."""
    return Adam(params, lr=lr, eps=eps)


def _has_fused_adam(param: torch.Tensor) -> bool:
    """Whether torch's fused Adam kernel runs here for `param`'s device and dtype (CPU: torch >= 2.4)."""
    if not hasattr(torch, "_fused_adam_"):
        return False
    probe = torch.zeros(1, dtype=param.dtype, device=param.device)
    try:
        torch._fused_adam_([probe.clone()], [probe.clone()], [probe.clone()], [probe.clone()], [],
                           [torch.ones((), device=param.device)], lr=0.0, beta1=0.9, beta2=0.999,
                           weight_decay=0.0, eps=1e-8, amsgrad=False, maximize=False)
    except (RuntimeError, NotImplementedError, TypeError):
        return False
    return True


def _foreach_adam(params: list[torch.Tensor], grads: list[torch.Tensor], exp_avgs: list[torch.Tensor],
                  exp_avg_sqs: list[torch.Tensor], step: int, lr: float, beta1: float, beta2: float,
                  eps: float) -> None:
    """torch.optim.Adam's update (foreach form): p -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps)."""
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
    bias_correction1 = 1 - beta1 ** step
    bias_correction2_sqrt = math.sqrt(1 - beta2 ** step)
    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denom, bias_correction2_sqrt)
    torch._foreach_add_(denom, eps)
    torch._foreach_addcdiv_(params, exp_avgs, denom, -lr / bias_correction1)


@torch.no_grad()
def clip_grad_norm_(params: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Scale the gradients in place so their global L2 norm is at most `max_norm`; returns the norm
    before clipping. The parameters' gradients must be on one device (an agent's always are)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    torch._foreach_mul_(grads, (max_norm / (total + 1e-6)).clamp_(max=1.0))
    return total


def gradient_step(optimizer: Any, loss: torch.Tensor, max_grad_norm: float) -> None:
    """One optimiser step on `loss`, with the gradient norm of the optimised (not frozen) parameters
    clipped to `max_grad_norm` (0: no clipping). The optimiser's groups list exactly those
    parameters, and reading them there is cheaper than walking `model.parameters()` at every step."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if max_grad_norm > 0:
        clip_grad_norm_([p for group in optimizer.param_groups for p in group["params"]], max_grad_norm)
    optimizer.step()
