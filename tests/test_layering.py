"""The seams between layers, read from the source with `ast` so they stay where ARCHITECTURE.md puts them.

- A world (envs/) imports nothing above it: of rlbase's own modules only other envs modules and a
  few leaves (errors, observation helpers, the tokenizer), which themselves import no other layer.
- rlbase/datasets.py reads the envs through their public names: no `env._private`, no classes
  loaded by string.
- Importing rlbase's light modules (errors, config, the agents' config modules, the command line,
  the sweep driver, report and plot) does not import torch: `import rlbase` registers the envs with
  Gymnasium only. Every agent's command-line flags are built and every config validated without it.
- No envs/ module grows past a size one can hold in one's head.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ENVS = sorted((ROOT / "envs").glob("*.py"))
LEAVES = {"rlbase.errors": ROOT / "rlbase" / "errors.py", "rlbase.obs": ROOT / "rlbase" / "obs.py",
          "rlbase.tokenizer": ROOT / "rlbase" / "tokenizer.py"}
"""The modules outside envs/ that envs may import: they import no other layer."""
MAX_ENV_LINES = 450
MODULE_PATH = re.compile(r"rlbase(\.[a-z_][a-z0-9_]*)+")


def rlbase_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every rlbase module `path` imports, at any depth (function-level imports and
    `from rlbase import x` included), and of every string naming one (`importlib.import_module(...)`)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
            if node.module == "rlbase":  # `from rlbase import config` imports the module rlbase.config
                found += [(node.lineno, f"rlbase.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and MODULE_PATH.fullmatch(node.value):
            found.append((node.lineno, node.value))
    return [(line, name) for line, name in found if name == "rlbase" or name.startswith("rlbase.")]


def allowed_from_envs(module: str) -> bool:
    return module.startswith("rlbase.envs") or module in LEAVES


@pytest.mark.parametrize("path", ENVS, ids=lambda p: p.name)
def test_envs_import_no_layer_above_them(path):
    arrows = [f"{path.name}:{line} imports {module}" for line, module in rlbase_imports(path)
              if not allowed_from_envs(module)]
    assert not arrows, "envs/ must not import config, backbones, agents, cli or any other layer:\n" + "\n".join(arrows)


@pytest.mark.parametrize("module", sorted(LEAVES))
def test_the_leaves_envs_use_import_no_other_layer(module):
    path = LEAVES[module]
    arrows = [f"{path.name}:{line} imports {name}" for line, name in rlbase_imports(path) if name not in LEAVES]
    assert not arrows, f"{module} is a leaf that envs/ imports: " + "; ".join(arrows)


def test_the_checks_see_an_arrow(tmp_path):
    """The walk above finds imports in every form a module can write them."""
    bad = tmp_path / "bad.py"
    bad.write_text("import importlib\nfrom rlbase.envs.core import TensorVecEnv\nfrom rlbase import config\n"
                   "def f():\n    import rlbase.backbones.text\n    return importlib.import_module('rlbase.cli')\n")
    arrows = sorted(module for _, module in rlbase_imports(bad) if not allowed_from_envs(module))
    assert arrows == ["rlbase", "rlbase.backbones.text", "rlbase.cli", "rlbase.config"]
    private = tmp_path / "private.py"
    private.write_text("def f(env, self):\n    env._pad + self._ok + env.__class__.__name__\n    env.pos = 1\n")
    assert private_reads(private) == [(2, "env._pad")]


def private_reads(path: Path) -> list[tuple[int, str]]:
    """(line, `name._attr`) of every private attribute of another object that `path` reads or writes."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            owner = node.value.id if isinstance(node.value, ast.Name) else ast.unparse(node.value)
            if owner not in ("self", "cls"):
                found.append((node.lineno, f"{owner}.{node.attr}"))
    return found


def test_datasets_use_public_env_names_only():
    path = ROOT / "rlbase" / "datasets.py"
    assert not private_reads(path), f"rlbase/datasets.py reads private attributes: {private_reads(path)}"
    by_name = [node.lineno for node in ast.walk(ast.parse(path.read_text()))
               if isinstance(node, ast.Attribute) and node.attr == "import_module"]
    assert not by_name, f"rlbase/datasets.py loads modules by name (lines {by_name}); import them"


@pytest.mark.parametrize("module", ["rlbase.errors", "rlbase.config", "rlbase.agents.dqn_config",
                                    "rlbase.agents.pg_config", "rlbase.agents.pqn_config", "rlbase.cli",
                                    "rlbase.sweep", "rlbase.report", "rlbase.plot"])
def test_light_modules_import_without_torch(module):
    code = f"import sys, {module}, gymnasium; assert 'rlbase/Maze-v0' in gymnasium.registry; " \
           "print(sorted(m for m in ('torch', 'ale_py', 'rlbase.envs.core') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"import {module} imported {out.strip()}"


@pytest.mark.parametrize("path", ENVS, ids=lambda p: p.name)
def test_env_modules_stay_small(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_ENV_LINES, f"envs/{path.name} has {lines} lines (> {MAX_ENV_LINES}): it is probably two things"


def test_the_sweep_driver_never_imports_torch(tmp_path):
    """Only the trials train: the driver's whole path around Ray (parsing, checks, the closing line)
    stays torch-free. Its closing line once imported torch to say "8 trials" (1.7 s at the end of every
    sweep on 2 cores). Ray's part is stood in for by a run_sweep that returns finished rows."""
    code = ("import sys\n"
            "import rlbase.sweep\n"
            "from rlbase import cli\n"
            "rows = [{'status': 'TERMINATED'}, {'status': 'TERMINATED'}]\n"
            "rlbase.sweep.run_sweep = lambda *args, **kwargs: rows\n"
            f"code = cli.main(['sweep', 'ppo', '--env', 'rlbase/CartPole-v1', '--seeds', '0-1', '--log-dir', {str(tmp_path)!r}])\n"
            "print(code, 'torch' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "0 False", proc.stderr
    assert "sweep done: 2 trials finished of 2" in proc.stderr


def test_the_command_line_builds_and_validates_without_torch():
    code = ("import sys\n"
            "from rlbase.agents import ALGORITHMS, get_spec\n"
            "from rlbase.cli import build_parser\n"
            "from rlbase.config import resolve_config\n"
            "for name in ALGORITHMS:\n"
            "    for argv in (['train', name, '--env', 'CartPole-v1'], ['sweep', name, '--env', 'CartPole-v1']):\n"
            "        build_parser(argv).parse_args(argv)\n"
            "    spec = get_spec(name)\n"
            "    spec.validate(resolve_config(spec.Config, name, {'env_id': 'ALE/Breakout-v5'}))\n"
            "print('torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_the_config_modules_name_the_registries_they_check():
    """validate_common checks backbone and activation names without importing the backbones (torch):
    its lists are the registries' keys, and each agent module's Agent is built from its config module's spec."""
    from rlbase.agents import ALGORITHMS, get_agent, get_spec
    from rlbase.backbones import ACTIVATIONS, BACKBONES
    from rlbase.config import ACTIVATION_NAMES, BACKBONE_NAMES

    assert BACKBONE_NAMES == tuple(BACKBONES) and ACTIVATION_NAMES == tuple(ACTIVATIONS)
    for name in ALGORITHMS:
        agent, spec = get_agent(name), get_spec(name)
        assert (agent.name, agent.summary, agent.Config, agent.validate) == \
            (spec.name, spec.summary, spec.Config, spec.validate)
