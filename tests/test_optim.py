"""rlbase.optim: Adam and gradient clipping against torch's own, step by step."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from rlbase.optim import Adam, _has_fused_adam, clip_grad_norm_


def make_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3))


def groups(net: nn.Module) -> list[dict]:
    # Two groups with different learning rates, as fine-tuning a pretrained backbone uses.
    return [{"params": list(net[0].parameters()), "lr_scale": 0.1},
            {"params": list(net[2].parameters()) + list(net[4].parameters()), "lr_scale": 1.0}]


def train_steps(net: nn.Module, optimizer, steps: int, seed: int, lr: float = 1e-2) -> None:
    gen = torch.Generator().manual_seed(seed)
    for i in range(steps):
        for group in optimizer.param_groups:  # the agents anneal the lr between steps
            group["lr"] = lr * (1 - i / (2 * steps)) * group.get("lr_scale", 1.0)
        x = torch.randn(32, 5, generator=gen)
        loss = (net(x) - torch.arange(3.0)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def cloned(state_dict: dict) -> dict:
    """A state dict with its own tensors, as a checkpoint file round trip gives (torch.optim's
    load_state_dict would otherwise share the moment tensors with the optimizer they came from)."""
    return {"state": {k: {n: t.clone() for n, t in v.items()} for k, v in state_dict["state"].items()},
            "param_groups": state_dict["param_groups"]}


def same_params(a: nn.Module, b: nn.Module, exact: bool = True) -> bool:
    pairs = list(zip(a.parameters(), b.parameters()))
    if exact:
        return all(torch.equal(x, y) for x, y in pairs)
    return all(torch.allclose(x, y, rtol=1e-5, atol=1e-7) for x, y in pairs)


fused_here = pytest.mark.skipif(not _has_fused_adam(torch.zeros(1)), reason="no fused CPU Adam in this torch")


@fused_here
def test_fused_path_matches_torch_fused_adam_exactly():
    ours_net, torch_net = make_net(0), make_net(0)
    ours = Adam(groups(ours_net), lr=1e-2, eps=1e-5)
    reference = torch.optim.Adam(groups(torch_net), lr=1e-2, eps=1e-5, fused=True)
    train_steps(ours_net, ours, 25, seed=1)
    train_steps(torch_net, reference, 25, seed=1)
    assert ours._use_fused is True
    assert not same_params(ours_net, make_net(0))  # it did train
    assert same_params(ours_net, torch_net)


def test_foreach_path_matches_torch_adam():
    ours_net, torch_net = make_net(0), make_net(0)
    ours = Adam(groups(ours_net), lr=1e-2, eps=1e-5, fused=False)
    reference = torch.optim.Adam(groups(torch_net), lr=1e-2, eps=1e-5, foreach=True)
    train_steps(ours_net, ours, 25, seed=1)
    train_steps(torch_net, reference, 25, seed=1)
    assert not same_params(ours_net, make_net(0))
    assert same_params(ours_net, torch_net, exact=False)


@pytest.mark.parametrize("fused", [False, pytest.param(True, marks=fused_here)])
def test_state_dict_loads_into_torch_adam_and_back(fused):
    # ours -> torch.optim.Adam: both continue identically (the checkpoint format is torch's).
    a_net = make_net(0)
    ours = Adam(groups(a_net), lr=1e-2, eps=1e-5, fused=fused)
    train_steps(a_net, ours, 7, seed=2)
    b_net = make_net(5)
    b_net.load_state_dict(a_net.state_dict())
    reference = torch.optim.Adam(groups(b_net), lr=1e-2, eps=1e-5, fused=fused, foreach=None if fused else True)
    reference.load_state_dict(cloned(ours.state_dict()))
    assert reference.param_groups[0]["lr_scale"] == 0.1
    assert float(reference.state[b_net[0].weight]["step"]) == 7
    train_steps(a_net, ours, 5, seed=3)
    train_steps(b_net, reference, 5, seed=3)
    assert same_params(a_net, b_net, exact=fused)

    # torch.optim.Adam -> ours (a checkpoint written before rlbase had its own Adam).
    c_net = make_net(9)
    c_net.load_state_dict(b_net.state_dict())
    restored = Adam(groups(c_net), lr=1.0, eps=1.0, fused=fused)
    restored.load_state_dict(cloned(reference.state_dict()))
    assert restored.param_groups[1]["eps"] == 1e-5 and restored.param_groups[1]["betas"] == (0.9, 0.999)
    train_steps(b_net, reference, 4, seed=4)
    train_steps(c_net, restored, 4, seed=4)
    assert same_params(b_net, c_net, exact=fused)


def test_load_state_dict_refuses_what_does_not_fit():
    net = make_net(0)
    ours = Adam(groups(net), lr=1e-2)
    train_steps(net, ours, 2, seed=0)
    saved = ours.state_dict()
    one_group = Adam(net.parameters(), lr=1e-2)
    with pytest.raises(ValueError, match="parameter groups"):
        one_group.load_state_dict(saved)
    other = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))
    with pytest.raises(ValueError, match="do not fit"):
        Adam(groups(other), lr=1e-2).load_state_dict(saved)
    with pytest.raises(ValueError, match="more than one"):
        Adam([{"params": list(net.parameters())}, {"params": list(net[0].parameters())}])
    with pytest.raises(ValueError, match="empty"):
        Adam([])


def test_parameters_without_gradients_are_left_alone():
    net = make_net(0)
    ours = Adam(net.parameters(), lr=1e-1)
    frozen = net[0].weight.detach().clone()
    net[0].weight.requires_grad_(False)  # gets no gradient
    train_steps(net, ours, 3, seed=0)
    assert torch.equal(net[0].weight, frozen)
    assert not torch.equal(net[2].weight, make_net(0)[2].weight)
    ours.zero_grad()
    assert all(p.grad is None for p in net.parameters())


@pytest.mark.parametrize("max_norm", [0.05, 1e3])  # clipping, and a norm already below the bound
def test_clip_grad_norm_matches_torch(max_norm):
    a, b = make_net(0), make_net(0)
    x = torch.randn(16, 5)
    for net in (a, b):
        net(x).pow(2).sum().backward()
    ours = clip_grad_norm_(a.parameters(), max_norm)
    reference = nn.utils.clip_grad_norm_(b.parameters(), max_norm)
    assert torch.allclose(ours, reference, rtol=1e-6)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-6, atol=1e-9)
    norm_after = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in a.parameters()]))
    assert float(norm_after) <= max_norm * (1 + 1e-5)


def test_training_an_agent_does_not_import_torch_dynamo():
    # Any torch.optim optimizer imports torch._dynamo when built (~1.3 s here); rlbase's agents avoid it.
    code = ("import sys, torch\n"
            "from rlbase.lifecycle import train\n"
            "out = train('ppo', {'env_id': 'rlbase/CartPole-v1', 'total_timesteps': 1024}, run_dir=None)\n"
            "assert out['num_updates'] > 0\n"
            "print('torch._dynamo' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize("fused", [False, pytest.param(True, marks=fused_here)])
def test_moments_load_in_the_layout_of_channels_last_parameters(fused):
    """Checkpoints hold contiguous tensors; a channels_last convolution's moments must come back in
    its own layout, or the fused kernel refuses them (found resuming a CNN run on CUDA)."""
    from safetensors.torch import load, save

    def conv_net():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(4, 8, 3), nn.Flatten(), nn.Linear(8 * 4 * 4, 2)).to(memory_format=torch.channels_last)

    def step(net, opt, seed):
        torch.manual_seed(seed)
        net(torch.randn(5, 4, 6, 6).to(memory_format=torch.channels_last)).square().mean().backward()
        opt.step()
        opt.zero_grad()

    net = conv_net()
    assert not net[0].weight.is_contiguous()
    ours = Adam(net.parameters(), lr=1e-2, fused=fused)
    step(net, ours, 1)
    state = ours.state_dict()
    # Through safetensors, as a checkpoint stores them: contiguous on the way back.
    moments = load(save({f"{k}.{n}": v[n].contiguous() for k, v in state["state"].items() for n in ("exp_avg", "exp_avg_sq")}))
    saved = {"param_groups": state["param_groups"],
             "state": {k: {"step": v["step"], "exp_avg": moments[f"{k}.exp_avg"], "exp_avg_sq": moments[f"{k}.exp_avg_sq"]}
                       for k, v in state["state"].items()}}
    resumed_net = conv_net()
    resumed_net.load_state_dict(net.state_dict())
    resumed = Adam(resumed_net.parameters(), lr=1e-2, fused=fused)
    resumed.load_state_dict(saved)
    exp_avgs, exp_avg_sqs = resumed._moments[0]
    for p, m, v in zip(resumed_net.parameters(), exp_avgs, exp_avg_sqs):
        assert m.stride() == v.stride() == p.stride()
    step(net, ours, 2)
    step(resumed_net, resumed, 2)  # the fused kernel took them
    assert same_params(net, resumed_net)
