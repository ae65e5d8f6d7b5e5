"""The backbone zoo: every backbone on every observation kind, text, dict observations, freezing,
and artifacts (save, load, and refusing what is not one)."""

from __future__ import annotations

import pickle

import gymnasium as gym
import numpy as np
import pytest
import torch

from rlbase.backbones import (BACKBONES, MultiInputBackbone, TextEncoder, backbone_names, build_backbone,
                              check_backbone, default_backbone, is_token_space, resolve_backbone_name)
from rlbase.backbones.artifact import (load_backbone, load_backbone_spec, load_backbone_weights, load_tokenizer,
                                       save_backbone)
from rlbase.errors import UsageError
from rlbase.tokenizer import PAD_ID, UNK, UNK_ID, Tokenizer

# (shape, high): an Atari stack, RGB frames, a one-hot maze grid, digits.
OBSERVATION_KINDS = {
    "atari": ((4, 84, 84), 255),
    "rgb64": ((3, 64, 64), 255),
    "grid11": ((3, 11, 11), 1),
    "digits": ((1, 40, 40), 255),
}
VISION = ["mlp", "nature_cnn", "impala_cnn", "resnet", "vit", "film_cnn"]
MISSIONS = ["go to the red ball", "pick up the blue key", "open the door"]


def box(kind: str) -> gym.spaces.Box:
    shape, high = OBSERVATION_KINDS[kind]
    return gym.spaces.Box(0, high, shape, np.uint8)


def sample(space: gym.spaces.Box, batch: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, int(space.high.max()) + 1, (batch, *space.shape), generator=g).to(torch.uint8)


def token_space(vocab: int = 12, max_len: int = 6) -> gym.spaces.Box:
    return gym.spaces.Box(0, vocab - 1, (max_len,), np.int64)


def dict_space() -> gym.spaces.Dict:
    return gym.spaces.Dict({"mission": token_space(), "image": gym.spaces.Box(0, 1, (3, 7, 7), np.uint8)})


def dict_sample(batch: int = 3) -> dict[str, torch.Tensor]:
    ids = torch.tensor([[2, 3, 4, 0, 0, 0], [5, 6, 7, 8, 9, 10], [0, 0, 0, 0, 0, 0]])[:batch]
    return {"image": sample(dict_space()["image"], batch), "mission": ids}


@pytest.mark.parametrize("kind", OBSERVATION_KINDS)
@pytest.mark.parametrize("name", VISION)
def test_vision_backbone_on_every_observation_kind(name, kind):
    space = box(kind)
    if not BACKBONES[name][1](space):
        assert name == "nature_cnn" and space.shape[1] < 36  # the only combination refused
        with pytest.raises(UsageError, match="nature_cnn"):
            check_backbone(name, space)
        return
    torch.manual_seed(0)
    net = build_backbone(name, space, (32,))
    out = net(sample(space, 2))
    assert out.shape == (2, net.out_dim) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    out.pow(2).sum().backward()
    for param_name, param in net.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), param_name
        assert param.grad.abs().sum() > 0, f"{param_name} gets no gradient"


@pytest.mark.parametrize("shape", [(3, 7, 7), (2, 5, 9), (3, 84, 84)])
def test_resnet_and_vit_take_odd_sizes(shape):
    space = gym.spaces.Box(-1, 1, shape, np.float32)
    for name in ("resnet", "vit"):
        net = build_backbone(name, space)
        assert net(torch.rand(2, *shape)).shape == (2, net.out_dim)


def test_token_spaces_default_to_text():
    assert is_token_space(token_space()) and default_backbone(token_space()) == "text"
    assert not is_token_space(gym.spaces.Box(0, 255, (128,), np.uint8))  # Atari RAM stays an mlp input
    assert default_backbone(gym.spaces.Box(0, 255, (128,), np.uint8)) == "mlp"
    assert default_backbone(gym.spaces.Box(-1, 1, (8,), np.float32)) == "mlp"
    with pytest.raises(UsageError, match="text"):
        check_backbone("text", gym.spaces.Box(-1, 1, (8,), np.float32))


def test_text_encoder_padding_float_ids_and_unknown_ids():
    torch.manual_seed(0)
    space = token_space(vocab=12)
    net = build_backbone("text", space)
    assert isinstance(net, TextEncoder) and net.vocab_size == 12
    ids = torch.tensor([[2, 3, 4, 0, 0, 0], [2, 3, 4, 5, 6, 7], [0, 0, 0, 0, 0, 0]])
    out = net(ids)
    assert out.shape == (3, 128) and torch.isfinite(out).all()  # the all-padding row too
    assert torch.equal(net(ids.float()), out)  # Stable-Baselines3 hands ids over as floats
    # Padding is masked: what sits after the words does not change the features.
    assert torch.allclose(net(torch.tensor([[2, 3, 4, 0, 0, 0]])), out[:1], atol=1e-6)
    # Ids outside the vocabulary read as UNK_ID.
    assert torch.allclose(net(torch.tensor([[2, 99, -3, 0, 0, 0]])), net(torch.tensor([[2, UNK_ID, UNK_ID, 0, 0, 0]])))
    out.sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    assert torch.isfinite(net.tokens.weight.grad).all()


def test_text_encoder_encodes_each_distinct_instruction_once_when_training():
    """In training mode copies of a row are encoded once; features and gradients are those of
    encoding every row (eval mode does)."""
    torch.manual_seed(0)
    net = build_backbone("text", token_space(vocab=12))
    rows = torch.tensor([[2, 3, 4, 0, 0, 0], [5, 6, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]])
    ids = rows[torch.tensor([0, 1, 0, 0, 2, 1, 0, 2])]  # 8 rows, 3 distinct
    weights = torch.randn(8, 128)  # a different loss weight for each copy
    encoded = []
    net.encoder.register_forward_hook(lambda module, args, output: encoded.append(output.shape[0]))
    params = list(net.parameters())
    out = net.train()(ids)
    grads = torch.autograd.grad((out * weights).sum(), params)
    reference = net.eval()(ids)
    reference_grads = torch.autograd.grad((reference * weights).sum(), params)
    assert encoded == [3, 8]
    assert torch.allclose(out, reference, atol=1e-6)
    for grad, expected in zip(grads, reference_grads):
        assert torch.allclose(grad, expected, rtol=1e-4, atol=1e-6)


def test_tokenizer_round_trip(tmp_path):
    tokenizer = Tokenizer.from_texts(MISSIONS)
    ids = tokenizer.encode("Go to the RED ball!", 8)
    assert len(ids) == 8 and ids[5:] == [PAD_ID] * 3
    assert tokenizer.decode(ids) == "go to the red ball"
    assert tokenizer.decode(tokenizer.encode("go to the purple box", 8)) == f"go to the {UNK} {UNK}"
    tokenizer.save(tmp_path / "vocab.json")
    assert Tokenizer.load(tmp_path / "vocab.json") == tokenizer


def test_multi_input_fusion_mixes_the_keys():
    """With the fusion MLP, what an instruction changes in the features depends on the image (what
    "go to the one it names" needs); plain concatenation only adds separate terms."""
    from rlbase.backbones.multi import MultiInputBackbone as Multi

    space = dict_space()
    torch.manual_seed(0)
    subs = {k: build_backbone("auto", space[k]) for k in space.keys()}
    obs = dict_sample()
    swapped = dict(obs, mission=obs["mission"].flip(0))  # the same images with other instructions
    for fusion_sizes in ((), (256, 256)):
        net = Multi(subs, fusion_sizes=fusion_sizes)
        effect = net(swapped) - net(obs)  # (batch, features): the instruction's effect on each image
        target = effect[0]
        images = dict(obs, image=obs["image"][[1] * 3])  # another image, the same instructions
        other = net(dict(swapped, image=images["image"])) - net(images)
        additive = torch.allclose(other[0], target, atol=1e-5)
        assert additive == (fusion_sizes == ()), fusion_sizes


def test_multi_input_auto_single_name_and_spec():
    space = dict_space()
    assert default_backbone(space) == "auto"
    assert backbone_names("auto", space) == {"image": "film_cnn", "mission": "text"}  # the text modulates the image
    assert backbone_names("resnet", space) == {"image": "resnet", "mission": "text"}  # mission keeps its default
    assert backbone_names("mission=text, image=vit", space) == {"image": "vit", "mission": "text"}
    assert backbone_names("image=resnet", space) == {"image": "resnet", "mission": "text"}
    assert resolve_backbone_name("resnet", space) == "image=resnet,mission=text"
    assert check_backbone("image=resnet", space) == "image=resnet"  # given back as written
    for name in ("auto", "resnet", "image=vit,mission=text"):
        net = build_backbone(name, space)
        assert isinstance(net, MultiInputBackbone) and list(net.sub_backbones) == ["image", "mission"]
        assert net.out_dim == 256  # the fusion MLP's width
        assert net.fusion[0].in_features == sum(sub.out_dim for sub in net.sub_backbones.values())
        out = net(dict_sample())
        assert out.shape == (3, net.out_dim) and torch.isfinite(out).all()


@pytest.mark.parametrize("name, message", [
    ("unknown_net", "unknown backbone 'unknown_net'"),
    ("image=unknown_net", "observation key 'image': unknown backbone 'unknown_net'"),
    ("colour=resnet", "names key 'colour'"),
    ("mission=resnet", "observation key 'mission': backbone 'resnet' needs"),
    ("image=nature_cnn", "observation key 'image': backbone 'nature_cnn' needs"),
    ("nature_cnn", "none of the observation keys"),
    ("image=resnet,image=vit", "appears twice"),
    ("image=,mission=text", "bad backbone spec"),
])
def test_check_backbone_errors_on_dicts(name, message):
    with pytest.raises(UsageError, match=message) as err:
        check_backbone(name, dict_space())
    assert "\n" not in str(err.value)


def test_check_backbone_errors_on_single_spaces():
    with pytest.raises(UsageError, match="needs Dict observations"):
        check_backbone("image=resnet", box("grid11"))
    with pytest.raises(UsageError, match="unknown backbone"):
        check_backbone("resnet50", box("grid11"))
    with pytest.raises(UsageError, match="vit"):
        check_backbone("vit", token_space())


def test_frozen_backbone_stays_put_while_the_head_learns():
    torch.manual_seed(0)
    space = box("grid11")
    backbone = build_backbone("resnet", space).requires_grad_(False)
    head = torch.nn.Linear(backbone.out_dim, 4)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    head_before = head.weight.detach().clone()
    optimizer = torch.optim.Adam(list(backbone.parameters()) + list(head.parameters()), lr=1e-2)
    loss = head(backbone(sample(space, 4))).pow(2).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())
    assert not torch.equal(head.weight, head_before)


def _artifact_cases():
    """(name, space, observations) for every backbone, each on a space it accepts."""
    grid, digits = box("grid11"), box("digits")
    return [
        ("mlp", grid, sample(grid, 2)),
        ("nature_cnn", digits, sample(digits, 2)),
        ("impala_cnn", grid, sample(grid, 2)),
        ("resnet", grid, sample(grid, 2)),
        ("vit", grid, sample(grid, 2)),
        ("text", token_space(), dict_sample()["mission"]),
        ("image=resnet", dict_space(), dict_sample()),
    ]


@pytest.mark.parametrize("case", range(len(_artifact_cases())))
def test_artifact_round_trip(tmp_path, case):
    name, space, obs = _artifact_cases()[case]
    torch.manual_seed(case)
    net = build_backbone(name, space, (32, 16), "tanh")
    tokenizer = Tokenizer.from_texts(MISSIONS[:1]) if name in ("text", "image=resnet") else None
    path = save_backbone(tmp_path / "art", net, name, space, (32, 16), "tanh", task="maze",
                         metrics={"return": np.float32(0.5)}, tokenizer=tokenizer)
    spec = load_backbone_spec(path)
    assert spec["name"] == resolve_backbone_name(name, space) and spec["out_dim"] == net.out_dim
    assert spec["task"] == "maze" and spec["metrics"] == {"return": 0.5}
    loaded, _ = load_backbone(path, space)
    with torch.no_grad():
        assert torch.equal(loaded(obs), net(obs))
    fresh = build_backbone(name, space, (32, 16), "tanh")
    load_backbone_weights(fresh, path, name, space)
    with torch.no_grad():
        assert torch.equal(fresh(obs), net(obs))
    assert load_tokenizer(path) == tokenizer
    # Saving again replaces the artifact, leaving no staging directories behind.
    save_backbone(path, fresh, name, space, (32, 16), "tanh")
    assert load_tokenizer(path) is None and [p.name for p in tmp_path.iterdir()] == ["art"]


def test_artifacts_refuse_what_is_not_one(tmp_path):
    space = box("grid11")
    net = build_backbone("impala_cnn", space)
    path = save_backbone(tmp_path / "art", net, "auto", space, (64,), "relu")
    with pytest.raises(UsageError, match="no such backbone directory"):
        load_backbone(tmp_path / "missing")
    pickled = tmp_path / "model.pt"
    torch.save(net.state_dict(), pickled)
    with pytest.raises(UsageError, match="never unpickles"):
        load_backbone(pickled)
    with open(tmp_path / "model.pkl", "wb") as f:
        pickle.dump({"weights": 1}, f)
    with pytest.raises(UsageError, match="never unpickles"):
        load_backbone_spec(tmp_path / "model.pkl")
    (path / "backbone.json").write_text("{not json")
    with pytest.raises(UsageError, match="corrupt JSON"):
        load_backbone(path)
    (path / "backbone.json").write_text('{"format": "something-else"}')
    with pytest.raises(UsageError, match="not an rlbase backbone"):
        load_backbone(path)
    with pytest.raises(UsageError, match="not a backbone artifact"):  # never overwrite a stranger's directory
        save_backbone(tmp_path, net, "auto", space, (64,), "relu")


def test_artifacts_refuse_corrupt_weights(tmp_path):
    space = box("grid11")
    path = save_backbone(tmp_path / "art", build_backbone("resnet", space), "resnet", space, (64,), "relu")
    data = (path / "backbone.safetensors").read_bytes()
    (path / "backbone.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(UsageError, match="backbone.safetensors is truncated") as err:
        load_backbone(path)
    assert "\n" not in str(err.value)
    torch.save({"x": torch.zeros(1)}, path / "backbone.safetensors")
    with pytest.raises(UsageError, match="never unpickles"):
        load_backbone(path)


def test_artifacts_refuse_mismatched_observations(tmp_path):
    grid = box("grid11")
    path = save_backbone(tmp_path / "art", build_backbone("resnet", grid), "resnet", grid, (64,), "relu")
    with pytest.raises(UsageError, match=r"\(3, 11, 11\) uint8 in \[0, 1\].*\(3, 7, 7\)"):
        load_backbone(path, gym.spaces.Box(0, 1, (3, 7, 7), np.uint8))
    with pytest.raises(UsageError, match=r"in \[0, 255\]"):  # pixels would be scaled differently
        load_backbone(path, gym.spaces.Box(0, 255, (3, 11, 11), np.uint8))
    with pytest.raises(UsageError, match="holds backbone 'resnet', but this run uses 'vit'"):
        load_backbone_weights(build_backbone("vit", grid), path, "vit", grid)
    text_path = save_backbone(tmp_path / "text", build_backbone("text", token_space(12)), "text",
                              token_space(12), (64,), "relu")
    with pytest.raises(UsageError, match="vocabulary 12.*vocabulary 20"):
        load_backbone(text_path, token_space(20))
    with pytest.raises(UsageError, match="tokenizer has"):
        save_backbone(tmp_path / "small", build_backbone("text", token_space(3)), "text", token_space(3), (64,),
                      "relu", tokenizer=Tokenizer.from_texts(MISSIONS))


@pytest.mark.parametrize("shape", [(11, 8, 8), (3, 64, 64)])
def test_film_cnn_starts_unconditioned_and_is_modulated_by_the_condition(shape):
    from rlbase.backbones import FiLMCNN

    space = gym.spaces.Box(0, 1 if shape[0] == 11 else 255, shape, np.uint8)
    net = FiLMCNN(space)
    net.set_condition_dim(5)
    obs = torch.randint(0, int(space.high.max()) + 1, (4, *shape), dtype=torch.uint8)
    cond = torch.randn(4, 5)
    assert torch.allclose(net(obs, cond), net(obs))  # zero-initialised FiLM: identity at first
    loss = net(obs, cond).sum()
    loss.backward()
    assert all(layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0 for layer in net.film)
    with torch.no_grad():
        for layer in net.film:
            layer.weight.normal_()
    assert not torch.allclose(net(obs, cond), net(obs, -cond))


def test_preset_observation_blocks_name_known_kinds():
    """Every `observations:` block of a preset is keyed by a kind `observation_kind` can return."""
    from rlbase.agents import ALGORITHMS
    from rlbase.backbones import OBSERVATION_KINDS as KINDS
    from rlbase.config import _preset_file

    seen = 0
    for algo in ALGORITHMS:
        for env_id, block in (_preset_file(algo).get("envs") or {}).items():
            for kind in (block or {}).get("observations") or {}:
                assert kind in KINDS, f"{algo} preset for {env_id}: unknown observation kind {kind!r}"
                seen += 1
    assert seen >= 1  # the maze's grid-only mlp, at least


@pytest.mark.parametrize("make,kind,default", [
    (lambda: gym.spaces.Box(-1.0, 1.0, (4,), np.float32), "vector", "mlp"),
    (lambda: box("grid11"), "grid", "impala_cnn"),
    (lambda: box("atari"), "image", "nature_cnn"),
    (lambda: token_space(), "tokens", "text"),
    (lambda: dict_space(), "dict", "auto"),
], ids=["vector", "grid", "image", "tokens", "dict"])
def test_observation_kind_and_default_backbone(make, kind, default):
    from rlbase.backbones import observation_kind

    assert observation_kind(make()) == kind and default_backbone(make()) == default
