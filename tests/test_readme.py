"""The README's Python example runs as written (and stays short)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def python_example() -> str:
    text = README.read_text()
    section = text[text.index("\n## Python\n"):]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the README's Python section has no ```python block"
    return match.group(1)


def test_readme_python_example_trains_saves_loads_and_plays(tmp_path, monkeypatch):
    code = python_example()
    lines = [line for line in code.splitlines() if line.strip() and not line.strip().startswith("#")]
    assert len(lines) <= 10, f"the example has {len(lines)} lines of code; the README promises at most 10"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)  # noqa: S102 (our own README)
    # Trained (a run directory under runs/), saved (the CLI's checkpoint files), loaded and played:
    # the preset solves CartPole, so the loaded policy balances the pole for the whole episode.
    assert list((tmp_path / "runs").glob("*/checkpoints/latest.json"))
    assert (tmp_path / "ppo_cartpole" / "model.safetensors").is_file()
    assert (tmp_path / "ppo_cartpole" / "state.json").is_file()
    assert namespace["step"] == 500, f"the loaded agent's episode ended after {namespace['step']} steps"
    assert type(namespace["agent"]).__name__ == "PPO" and namespace["agent"].num_timesteps >= 45_000
