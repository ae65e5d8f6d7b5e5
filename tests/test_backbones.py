"""Backbones: output shapes, the default choice per observation space, and input scaling."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from rlbase.backbones import ImpalaCNN, MLP, build_backbone, check_backbone, default_backbone
from rlbase.errors import UsageError


@pytest.mark.parametrize("shape", [(3, 7, 7), (3, 11, 11), (3, 64, 64), (4, 84, 84)])
def test_impala_cnn_takes_grids_and_images(shape):
    space = gym.spaces.Box(0, 255, shape, np.uint8)
    net = ImpalaCNN(space)
    obs = torch.randint(0, 256, (5, *shape), dtype=torch.uint8)
    out = net(obs)
    assert out.shape == (5, net.out_dim)
    out.sum().backward()  # differentiable end to end
    assert all(p.grad is not None for p in net.parameters())


def test_default_backbone_per_space():
    assert default_backbone(gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)) == "nature_cnn"
    assert default_backbone(gym.spaces.Box(0, 1, (3, 11, 11), np.uint8)) == "impala_cnn"
    assert default_backbone(gym.spaces.Box(-1, 1, (8,), np.float32)) == "mlp"
    with pytest.raises(UsageError, match="nature_cnn"):
        check_backbone("nature_cnn", gym.spaces.Box(0, 1, (3, 11, 11), np.uint8))
    with pytest.raises(UsageError, match="impala_cnn"):
        check_backbone("impala_cnn", gym.spaces.Box(-1, 1, (8,), np.float32))


def test_uint8_pixels_are_scaled_but_one_hot_grids_are_not():
    grid = gym.spaces.Box(0, 1, (3, 5, 5), np.uint8)
    pixels = gym.spaces.Box(0, 255, (3, 5, 5), np.uint8)
    ones = torch.ones(2, 3, 5, 5, dtype=torch.uint8)
    torch.manual_seed(0)
    a = MLP(grid, (16,))
    torch.manual_seed(0)
    b = MLP(pixels, (16,))
    # Same weights: the grid's 1 must act like the pixels' 255.
    assert torch.allclose(a(ones), b(ones * 255))
    assert not torch.allclose(a(ones), b(ones))


def test_mlp_activation_and_build():
    space = gym.spaces.Box(-1, 1, (4,), np.float32)
    net = build_backbone("mlp", space, (8, 8), "tanh")
    assert isinstance(net.net[1], torch.nn.Tanh) and net.out_dim == 8
    assert (net(torch.randn(100, 4)).abs() <= 1).all()  # tanh outputs


def test_fast_tanh_matches_torch_tanh_values_and_gradients():
    from rlbase.backbones.vision import Tanh

    act = Tanh()
    large = torch.cat([torch.linspace(-30, 30, 2001), torch.randn(Tanh.min_numel)]).requires_grad_()
    reference = large.detach().clone().requires_grad_()
    out, expected = act(large), torch.tanh(reference)
    assert out.grad_fn is not None and "SigmoidTanh" in type(out.grad_fn).__name__  # the sigmoid path ran
    assert (out - expected).abs().max() <= 3e-7
    assert out.abs().max() <= 1.0
    weights = torch.randn(large.shape)
    (out * weights).sum().backward()
    (expected * weights).sum().backward()
    assert torch.allclose(large.grad, reference.grad, atol=1e-6)
    small = torch.randn(64, 8)
    assert torch.equal(act(small), torch.tanh(small))  # below the size threshold: torch.tanh itself
