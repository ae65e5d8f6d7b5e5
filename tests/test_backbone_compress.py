"""`rlbase quantize | distill | export` on a pretrained backbone artifact (an IMPALA-CNN pretrained
briefly on the shortest-path action of 7x7 grid mazes): held-out accuracy before and after on the
split `rlbase pretrain` evaluated on, sizes, ONNX parity, the compressed artifacts as
`--backbone-weights` of a PPO maze run, `rlbase eval` of each, one-line errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from rlbase.cli import main
from rlbase.safefiles import is_pickle
from tests.compresshelpers import one_error_line

MAZE = "size=7,obs_mode=grid"


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """`rlbase pretrain maze-action` of an impala_cnn (held-out accuracy about 0.7, chance 0.25)."""
    out = tmp_path_factory.mktemp("pretrain") / "teacher"
    assert main(["pretrain", "maze-action", "--backbone", "impala_cnn", "--env-kwargs", MAZE, "--train-samples", "4000",
                 "--val-samples", "1000", "--epochs", "4", "--batch-size", "64", "--out", str(out),
                 "--device", "cpu"]) == 0
    return out


@pytest.fixture(scope="module")
def distilled(teacher, tmp_path_factory):
    out = tmp_path_factory.mktemp("distill") / "student"
    # with the feature hint: the mlp student's 105 features reach the teacher's 256 through a learnt map
    assert main(["distill", str(teacher), "--out", str(out), "--train-samples", "16000", "--epochs", "8",
                 "--batch-size", "128", "--feature-weight", "0.5", "--device", "cpu"]) == 0
    return out


@pytest.fixture(scope="module")
def int8(teacher, tmp_path_factory):
    out = tmp_path_factory.mktemp("quantize") / "int8"
    assert main(["quantize", str(teacher), "--out", str(out), "--calibration-steps", "16"]) == 0
    return out


def report(folder) -> dict:
    return json.loads((folder / "report.json").read_text())


def eval_json(path, capsys) -> dict:
    capsys.readouterr()
    assert main(["eval", str(path), "--json", "--device", "cpu"]) == 0
    return json.loads(capsys.readouterr().out)


def pretrained_accuracy(teacher) -> float:
    return json.loads((teacher / "backbone" / "backbone.json").read_text())["metrics"]["val/accuracy"]


def test_eval_measures_the_artifact_on_the_held_out_split_pretrain_used(teacher, capsys):
    spec = json.loads((teacher / "backbone" / "backbone.json").read_text())
    assert spec["head"] == {"outputs": 4} and spec["data"]["val_samples"] == 1000
    assert (teacher / "backbone" / "head.safetensors").is_file()
    measured = eval_json(teacher, capsys)
    assert measured["kind"] == "backbone" and measured["held_out"]["samples"] == 1000
    # the same 1,000 held-out mazes: the accuracy pretraining logged, to float rounding
    assert measured["held_out"]["accuracy"] == pytest.approx(pretrained_accuracy(teacher), abs=1e-6)
    assert measured["held_out"]["accuracy"] > 0.5  # learnt something (4 classes)
    capsys.readouterr()
    assert main(["eval", str(teacher / "backbone"), "--device", "cpu"]) == 0
    assert "accuracy" in capsys.readouterr().out


def test_distilled_student_keeps_the_teachers_accuracy_at_a_quarter_of_the_size(teacher, distilled, capsys):
    rep = report(distilled)
    assert rep["teacher"]["held_out"]["accuracy"] == pytest.approx(pretrained_accuracy(teacher), abs=1e-6)
    assert rep["student"]["backbone"] == "mlp"  # the closest smaller student for a 1/4 target
    assert rep["parameter_ratio"] >= 3.0 and rep["bytes_ratio"] >= 3.0
    student, teacher_accuracy = rep["student"]["held_out"]["accuracy"], rep["teacher"]["held_out"]["accuracy"]
    assert student >= 0.85 * teacher_accuracy, (student, teacher_accuracy)
    # a normal artifact of the student, measured again by rlbase eval
    spec = json.loads((distilled / "backbone" / "backbone.json").read_text())
    assert spec["name"] == "mlp" and "quantization" not in spec and spec["distilled_from"]["backbone"] == "impala_cnn"
    assert eval_json(distilled, capsys)["held_out"]["accuracy"] == pytest.approx(student, abs=1e-6)
    lines = (distilled / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 8 and "val/accuracy" in json.loads(lines[-1])  # one point per epoch


def test_int8_artifact_is_smaller_and_as_accurate(teacher, int8, capsys):
    rep = report(int8)
    assert rep["static_conv_layers"] and rep["quantized_layers"]  # convolutions and Linear layers
    assert rep["quantized_weight_bytes"]["ratio"] >= 3.5
    assert rep["fp32"]["backbone_bytes"] >= 3.5 * rep["int8"]["backbone_bytes"] * 0.9  # biases stay fp32
    fp32, int8_accuracy = rep["held_out"]["fp32"]["accuracy"], rep["held_out"]["int8"]["accuracy"]
    assert fp32 == pytest.approx(pretrained_accuracy(teacher), abs=1e-6)
    assert abs(int8_accuracy - fp32) <= 0.03 and rep["parity"]["same_predictions"] >= 0.9
    assert eval_json(int8, capsys)["held_out"]["accuracy"] == pytest.approx(int8_accuracy, abs=1e-6)
    for file in (int8 / "backbone").iterdir():
        assert not is_pickle(file.read_bytes()[:16]), file
    stored = load_file(str(int8 / "backbone" / "backbone.safetensors"))
    assert stored["fc.0.weight.int8"].dtype == torch.int8 and "fc.0.weight" not in stored


def test_int8_backbone_loads_dequantized_on_its_int8_grid(teacher, int8):
    from rlbase.backbones.artifact import load_backbone

    fp32, _ = load_backbone(teacher)
    dequantized, _ = load_backbone(int8)
    stored = load_file(str(int8 / "backbone" / "backbone.safetensors"))
    for name in ("fc.0", "convs.0"):
        weight = dequantized.state_dict()[f"{name}.weight"]
        scale = stored[f"{name}.weight.scale"] if f"{name}.weight.scale" in stored else stored[f"{name}.weight.scales"]
        scale = scale.reshape(-1, *[1] * (weight.dim() - 1)).float()
        codes = weight / scale
        assert torch.allclose(codes, codes.round(), atol=1e-3)  # on the int8 grid
        assert ((weight - fp32.state_dict()[f"{name}.weight"]).abs() <= scale / 2 + 1e-6).all()  # nearest point


def test_sb3_takes_an_int8_backbone_frozen_only(teacher, int8):
    """The SB3 adapter follows `--backbone-weights`: an int8 artifact loads (dequantized) only frozen."""
    import gymnasium as gym

    from rlbase.sb3 import BackboneExtractor

    space = gym.make("rlbase/Maze-v0", size=7, obs_mode="grid").observation_space
    with pytest.raises(ValueError, match="int8 artifact"):
        BackboneExtractor(space, weights=str(int8))
    frozen = BackboneExtractor(space, weights=str(int8), freeze=True)
    assert not any(p.requires_grad for p in frozen.parameters())
    assert any(p.requires_grad for p in BackboneExtractor(space, weights=str(teacher)).parameters())


def test_exported_onnx_matches_torch_on_held_out_inputs(teacher, tmp_path, capsys):
    out = tmp_path / "onnx"
    assert main(["export", str(teacher), "--out", str(out), "--parity-samples", "500"]) == 0
    rep = report(out)
    assert rep["parity"]["passed"] and rep["parity"]["samples"] == 500
    assert rep["parity"]["max_abs_diff"] <= 1e-4 and rep["parity"]["same_predictions"] == 1.0
    assert rep["held_out"]["onnx"]["accuracy"] == pytest.approx(rep["held_out"]["torch"]["accuracy"], abs=2e-3)
    played = eval_json(out / "model.onnx", capsys)
    assert played["runtime"] == "onnxruntime"
    assert played["held_out"]["accuracy"] == pytest.approx(rep["held_out"]["onnx"]["accuracy"], abs=1e-6)


def test_compressed_artifacts_are_backbone_weights_of_a_ppo_maze_run(distilled, int8, tmp_path, capsys):
    from rlbase.backbones.artifact import load_backbone

    common = ["train", "ppo", "--env", "rlbase/Maze-v0", "--env-kwargs", MAZE, "--num-envs", "4", "--num-steps", "32",
              "--total-timesteps", "128", "--log-dir", str(tmp_path), "--freeze-backbone"]
    hidden = ",".join(map(str, report(distilled)["student"]["hidden_sizes"]))
    for name, artifact, extra in (("student", distilled, ["--hidden-sizes", hidden]), ("int8", int8, [])):
        assert main([*common, "--run-name", name, "--backbone-weights", str(artifact), *extra]) == 0
        checkpoint = max((tmp_path / name / "checkpoints").glob("step_*"))
        tensors = load_file(str(checkpoint / "model.safetensors"))
        backbone, _ = load_backbone(artifact)  # the int8 one dequantized
        for key, value in backbone.state_dict().items():
            assert torch.equal(tensors[f"model.actor_backbone.{key}"], value), (name, key)
    capsys.readouterr()
    # fine-tuning an int8 backbone would move it off its grid: refused
    assert main([*common[:-1], "--run-name", "tuned", "--backbone-weights", str(int8)]) == 2
    assert "--freeze-backbone" in one_error_line(capsys)


def test_bad_inputs_are_one_line(teacher, int8, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(teacher / "backbone", broken)
    (broken / "backbone.json").write_text("{not json")
    truncated = tmp_path / "truncated"
    shutil.copytree(teacher / "backbone", truncated)
    (truncated / "head.safetensors").write_bytes((teacher / "backbone" / "head.safetensors").read_bytes()[:100])
    headless = tmp_path / "headless"
    shutil.copytree(teacher / "backbone", headless)
    spec = json.loads((headless / "backbone.json").read_text())
    del spec["head"]
    (headless / "backbone.json").write_text(json.dumps(spec))
    cases = [
        (["quantize", str(broken)], "corrupt JSON"),
        (["eval", str(truncated)], "head.safetensors"),
        (["distill", str(headless)], "no task head"),
        (["export", str(teacher), "--format", "tflite"], "unsupported --format"),
        (["export", str(teacher), "--format", "torchscript"], "torchscript"),
        (["export", str(int8)], "int8"),
        (["quantize", str(int8)], "already an int8"),
        (["distill", str(teacher), "--backbone", "nature_cnn"], "invalid --backbone"),
        (["distill", str(teacher), "--steps", "100"], "--steps applies to agent runs"),
        (["distill", str(teacher), "--feature-weight", "-1"], "invalid --feature-weight"),
        (["eval", str(teacher), "--episodes", "3"], "--episodes"),
    ]
    for args, fragment in cases:
        capsys.readouterr()
        assert main(args) == 2, args
        assert fragment in one_error_line(capsys), args
    assert not list(tmp_path.glob("*-quantize")) and not list(tmp_path.glob("*-distill"))
