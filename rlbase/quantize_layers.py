"""The int8 layers of an acting path, for `rlbase quantize`: which Linear and Conv2d layers are
quantized, quantizing a network (dynamic int8 Linear layers, statically calibrated int8 convolutions,
with torch.ao.quantization), the tensors an artifact stores for them, and rebuilding the int8
network from those tensors (`build_quantized`: the stored int8 weights and scales, not a
re-quantization). Reading and writing the artifact folder is `rlbase.quantize`'s; the module
docstring there says why this scheme.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any, Callable

import torch
from torch import nn

from rlbase.errors import RlbaseError
from rlbase.obs import Obs, batch_size, take


def _dynamic_linear_types() -> tuple[Callable[..., nn.Module], type]:
    """`quantize_dynamic` and the dynamic int8 Linear class, with torch 2.13's deprecation notice
    for torch.ao.quantization silenced (see the module docstring for why it is still the choice)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
        from torch.ao.quantization import quantize_dynamic
    return quantize_dynamic, DynamicLinear


FP32_CONTAINERS = (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer, nn.MultiheadAttention)
"""Modules whose Linear layers stay fp32: their fused fast path reads `linear.weight` as a tensor,
which a dynamic int8 Linear has as a method (torch's Transformer layers then fail on the first call)."""


def quantizable_linears(net: nn.Module) -> list[str]:
    """Names of the Linear layers of `net` that dynamic int8 quantization takes."""
    inside = {f"{name}.{sub}" if name else sub for name, module in net.named_modules()
              if isinstance(module, FP32_CONTAINERS) for sub, _ in module.named_modules() if sub}
    return [name for name, module in net.named_modules() if type(module) is nn.Linear and name not in inside]


def static_convs(net: nn.Module) -> list[str]:
    """Names of the Conv2d layers of `net` that static int8 quantization takes."""
    inside = {f"{name}.{sub}" if name else sub for name, module in net.named_modules()
              if isinstance(module, FP32_CONTAINERS) for sub, _ in module.named_modules() if sub}
    return [name for name, module in net.named_modules() if type(module) is nn.Conv2d and name not in inside]


def quantize_net(net: nn.Module, calibration: Obs | None = None,
                 convs: list[str] | None = None) -> tuple[nn.Module, list[str], list[str]]:
    """A copy of `net` with its Linear layers (`quantizable_linears`) dynamically quantized to int8
    and its Conv2d layers `convs` (default: `static_convs`) statically quantized, each wrapped in a
    `QuantWrapper` (quantize its input, int8 convolution, dequantize its output; x86 qconfig:
    per-channel int8 weights, uint8 activations) whose activation scales come from running
    `calibration` through the network (none: placeholders, for a rebuild that sets them).
    Returns the network and the names of its dynamic Linear and static Conv2d layers."""
    quantize_dynamic, DynamicLinear = _dynamic_linear_types()
    from torch.ao.quantization import (
        QuantWrapper,
        convert,
        default_dynamic_qconfig,
        get_default_qconfig,
        prepare,
    )

    convs = static_convs(net) if convs is None else convs
    names = quantizable_linears(net)
    qnet = copy.deepcopy(net)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation notices of torch.ao and quantized tensor creation
        for name in convs:
            wrapper = QuantWrapper(qnet.get_submodule(name))
            wrapper.qconfig = get_default_qconfig("x86")
            prepare(wrapper, inplace=True)
            qnet.set_submodule(name, wrapper)
        if convs and calibration is not None:
            with torch.no_grad():
                for start in range(0, batch_size(calibration), 256):
                    qnet(take(calibration, slice(start, start + 256)))
        for name in convs:
            convert(qnet.get_submodule(name), inplace=True)
        qnet = quantize_dynamic(qnet, {name: default_dynamic_qconfig for name in names}, dtype=torch.qint8)
    layers = [name for name, module in qnet.named_modules() if isinstance(module, DynamicLinear)]
    return qnet.eval(), layers, convs


def artifact_tensors(net: nn.Module, qnet: nn.Module, layers: list[str], convs: list[str]) -> dict[str, torch.Tensor]:
    """What model.safetensors holds: `net`'s fp32 state less the quantized weights, plus each
    quantized Linear weight's int8 values, scale and zero point, and each static convolution's int8
    weight with per-channel scales and zero points and its input and output scale and zero point."""
    quantized = {f"{name}.weight" for name in layers + convs}
    tensors = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items() if k not in quantized}
    for name in layers:
        weight = qnet.get_submodule(name).weight()  # a per-tensor affine qint8 tensor
        tensors[f"{name}.weight.int8"] = weight.int_repr().contiguous()
        tensors[f"{name}.weight.scale"] = torch.tensor([weight.q_scale()], dtype=torch.float64)
        tensors[f"{name}.weight.zero_point"] = torch.tensor([weight.q_zero_point()], dtype=torch.int64)
    for name in convs:
        wrapper = qnet.get_submodule(name)
        weight = wrapper.module.weight()  # per-channel affine qint8, axis 0
        tensors[f"{name}.weight.int8"] = weight.int_repr().contiguous()
        tensors[f"{name}.weight.scales"] = weight.q_per_channel_scales().to(torch.float64).contiguous()
        tensors[f"{name}.weight.zero_points"] = weight.q_per_channel_zero_points().to(torch.int64).contiguous()
        tensors[f"{name}.input.scale"] = wrapper.quant.scale.detach().to(torch.float64).reshape(1).clone()
        tensors[f"{name}.input.zero_point"] = wrapper.quant.zero_point.detach().to(torch.int64).reshape(1).clone()
        tensors[f"{name}.output.scale"] = torch.tensor([wrapper.module.scale], dtype=torch.float64)
        tensors[f"{name}.output.zero_point"] = torch.tensor([wrapper.module.zero_point], dtype=torch.int64)
    return tensors


def fp32_layers(net: nn.Module, quantized: list[str]) -> list[str]:
    """Modules with weights of their own that stay fp32 (embeddings, norms, Transformer layers)."""
    return [name for name, module in net.named_modules()
            if name and name not in quantized and any(True for _ in module.parameters(recurse=False))]


CONV_PARTS = ("weight.int8", "weight.scales", "weight.zero_points", "input.scale", "input.zero_point", "output.scale",
              "output.zero_point")


def _qparams(tensors: dict[str, torch.Tensor], name: str, part: str) -> tuple[float, int]:
    """A stored (scale, zero point) pair `name.part.scale` / `name.part.zero_point`, checked."""
    scale, zero_point = tensors[f"{name}.{part}.scale"], tensors[f"{name}.{part}.zero_point"]
    if (scale.shape != (1,) or zero_point.shape != (1,) or zero_point.dtype != torch.int64
            or not scale.is_floating_point() or not 0 < float(scale) < float("inf")):
        raise ValueError(f"the {part} scale or zero point of layer {name} is malformed")
    return float(scale), int(zero_point)


def _conv_weight(tensors: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    """A stored per-channel int8 convolution weight as a quantized tensor, checked."""
    weight = tensors[f"{name}.weight.int8"]
    scales, zero_points = tensors[f"{name}.weight.scales"], tensors[f"{name}.weight.zero_points"]
    if (weight.dtype != torch.int8 or weight.dim() != 4 or scales.shape != (weight.shape[0],)
            or zero_points.shape != scales.shape or zero_points.dtype != torch.int64 or scales.dtype != torch.float64
            or not bool(((scales > 0) & torch.isfinite(scales)).all())):
        raise ValueError(f"the int8 weight of convolution {name} is malformed")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # quantized tensor creation is deprecated in torch 2.13
        return torch.quantize_per_channel(
            ((weight.to(torch.float64) - zero_points.view(-1, 1, 1, 1)) * scales.view(-1, 1, 1, 1)).to(torch.float32),
            scales, zero_points, 0, torch.qint8)


def _linear_weight(tensors: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    """A stored per-tensor int8 Linear weight as a quantized tensor, checked."""
    weight = tensors[f"{name}.weight.int8"]
    scale, zero_point = _qparams(tensors, name, "weight")
    if weight.dtype != torch.int8 or weight.dim() != 2:
        raise ValueError(f"the int8 weight of layer {name} is malformed")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # quantized tensor creation is deprecated in torch 2.13
        return torch.quantize_per_tensor((weight.to(torch.float32) - zero_point) * scale, scale, zero_point,
                                         torch.qint8)


def dequantized_state(tensors: dict[str, torch.Tensor], layers: list[str],
                      convs: list[str] = ()) -> dict[str, torch.Tensor]:
    """The fp32 state dict of an artifact's tensors: each int8 weight of `layers` (dynamic Linear)
    and `convs` (static Conv2d) dequantized to the values the int8 network computes with, the scales
    and zero points dropped, the other tensors as stored. KeyError for a missing tensor, ValueError
    for a malformed one."""
    int8_keys = {f"{name}.weight.{part}" for name in layers for part in ("int8", "scale", "zero_point")}
    int8_keys |= {f"{name}.{part}" for name in convs for part in CONV_PARTS}
    state = {k: v for k, v in tensors.items() if k not in int8_keys}
    for name in layers:
        state[f"{name}.weight"] = _linear_weight(tensors, name).dequantize()
    for name in convs:
        state[f"{name}.weight"] = _conv_weight(tensors, name).dequantize()
    return state


def build_quantized(make_net: Callable[[dict[str, torch.Tensor]], nn.Module], shapes: dict[str, Any],
                    layers: list[str], tensors: dict[str, torch.Tensor], source: str,
                    convs: list[str] = ()) -> nn.Module:
    """Rebuild an int8 acting path: `make_net(skeleton)` (the agent's acting_net on tensors of the
    source's shapes, filled with ones), its fp32 state from `tensors`, its Linear layers `layers`
    replaced by dynamic int8 ones and its convolutions `convs` by static int8 ones, holding the
    stored weights and scales. A RlbaseError naming `source` if the tensors do not fit."""
    skeleton = {key: torch.ones(spec["shape"], dtype=getattr(torch, spec["dtype"])) for key, spec in shapes.items()}
    convs = list(convs)
    try:
        net = make_net(skeleton)
        fp32 = dequantized_state(tensors, layers, convs)
        qweights = {name: _linear_weight(tensors, name) for name in layers}
        qweights.update({name: _conv_weight(tensors, name) for name in convs})
        own = net.state_dict()
        for key, value in own.items():
            if key in fp32 and (fp32[key].shape != value.shape or fp32[key].dtype != value.dtype):
                raise ValueError(f"tensor {key} is {fp32[key].dtype} {tuple(fp32[key].shape)}; the network's is "
                                 f"{value.dtype} {tuple(value.shape)}")
        net.load_state_dict(fp32)  # strict: the same names
        if not set(convs) <= set(static_convs(net)):
            raise ValueError(f"the network's convolutions are {static_convs(net)}, the artifact's {convs}")
        qnet, built, _ = quantize_net(net, None, convs)
        if sorted(built) != sorted(layers):
            raise ValueError(f"the network's Linear layers are {built}, the artifact's {layers}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for name in layers:  # the stored int8 weights, not a re-quantization of them
                module = qnet.get_submodule(name)
                module.set_weight_bias(qweights[name], module.bias())
            for name in convs:  # the stored weights and the calibrated activation scales
                wrapper = qnet.get_submodule(name)
                wrapper.module.set_weight_bias(qweights[name], wrapper.module.bias())
                scale, zero_point = _qparams(tensors, name, "input")
                wrapper.quant.scale.fill_(scale)
                wrapper.quant.zero_point.fill_(zero_point)
                wrapper.module.scale, wrapper.module.zero_point = _qparams(tensors, name, "output")
    except KeyError as exc:
        raise RlbaseError(f"{source}: tensor {exc.args[0]} is missing") from None
    except (ValueError, RuntimeError, TypeError) as exc:
        raise RlbaseError(f"{source} does not fit its config ({str(exc).splitlines()[0]})") from None
    from rlbase.guards import first_nonfinite_tensor

    bad = first_nonfinite_tensor({k: v for k, v in tensors.items() if v.is_floating_point()})
    if bad is not None:
        raise RlbaseError(f"{source}: tensor {bad} holds NaN or infinity")
    return qnet.eval()
