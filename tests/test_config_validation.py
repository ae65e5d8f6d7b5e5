"""The checks every agent's config shares (rlbase.config_checks: validate_learner, validate_epsilon_greedy and
validate_minibatches): each agent that has a field refuses its bad values with a one-line UsageError
that names the flag, and accepts the edge values the field allows. Torch-free: only the configs."""

from __future__ import annotations

import dataclasses

import pytest

from rlbase.agents import ALGORITHMS, get_spec
from rlbase.config import flag_name
from rlbase.errors import UsageError

# field: (values refused, values accepted)
SHARED = {
    "learning_rate": ([0.0, -1e-3], [1e-6]),
    "lr_restart_step": ([-1], [0, 10]),
    "adam_eps": ([0.0, -1e-8], [1e-8]),
    "gamma": ([-0.1, 1.5], [0.0, 1.0]),
    "max_grad_norm": ([-0.5], [0.0, 10.0]),
    "exploration_fraction": ([-0.1, 1.1], [0.0, 1.0]),
    "exploration_initial_eps": ([-0.5, 2.0], [0.0, 1.0]),
    "exploration_final_eps": ([-0.01, 1.5], [0.0, 1.0]),
    "update_epochs": ([0, -2], [1]),
    "num_minibatches": ([0, 10**9], [1]),
    "num_steps": ([0], [1]),
}


def cases():
    for algo in ALGORITHMS:
        fields = {f.name for f in dataclasses.fields(get_spec(algo).Config)}
        for field, (bad, good) in SHARED.items():
            if field in fields:
                yield algo, field, bad, good


@pytest.mark.parametrize("algo,field,bad,good", list(cases()), ids=lambda v: v if isinstance(v, str) else None)
def test_shared_fields_are_checked_alike(algo, field, bad, good):
    spec = get_spec(algo)
    for value in bad:
        cfg = spec.Config(env_id="CartPole-v1", **{field: value})
        with pytest.raises(UsageError) as error:
            spec.validate(cfg)
        message = str(error.value)
        assert message.startswith(f"invalid {flag_name(field)}:") and "\n" not in message, message
        assert repr(value) in message or str(value) in message, message
    for value in good:
        spec.validate(spec.Config(env_id="CartPole-v1", **{field: value}))


def test_every_agent_is_covered():
    covered = {algo for algo, *_ in cases()}
    assert covered == set(ALGORITHMS)
    # The Q-learners have the epsilon schedule, the minibatch learners their epochs.
    assert {a for a, f, *_ in cases() if f == "exploration_fraction"} == {"dqn", "pqn"}
    assert {a for a, f, *_ in cases() if f == "update_epochs"} == {"ppo", "pqn"}
