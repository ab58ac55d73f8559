"""A member's numbers do not depend on its companions (bit for bit, on the CPU), its random streams are its own, and a
member that fails stops alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch as th

from sb3_ppo_variants import NonFiniteLossError, Population, ProportionalKLController
from sb3_ppo_variants.population import trainer
from sb3_ppo_variants.population.members import MemberStreams

SMALL = dict(n_steps=64, n_envs=2, batch_size=32, n_epochs=3)

#: companions that once changed a member's numbers (value clipping, target_kl early stopping, other learning rates,
#: KL penalties of every kind, other surrogates)
COMPANIONS: list[dict[str, Any]] = [
    dict(variant="clip", seed=1, clip_range_vf=0.2),
    dict(variant="clip", seed=2, target_kl=0.001),
    dict(variant="kl", seed=3),
    dict(variant="adaptive_kl", seed=4, kl_estimator="k3"),
    dict(variant="clip_kl", seed=6, kl_penalty="proportional", kl_target=0.001),
    dict(variant="variant_ppo", seed=7, surrogate="dual_clip", kl_penalty="fixed", kl_coef=0.3, kl_estimator="k2"),
    dict(seed=8, learning_rate=1e-2),
]


def _member(pop: Population, k: int) -> tuple[th.Tensor, list[float], dict[str, float], th.Tensor]:
    return pop.policy.flat[k].detach().clone(), list(pop.episode_returns[k]), dict(pop.logs[k]), pop.optimizer.exp_avg_sq[0][k]


def _assert_identical(ours: tuple[Any, ...], alone: tuple[Any, ...]) -> None:
    assert th.equal(ours[0], alone[0]), (ours[0] - alone[0]).abs().max()
    assert ours[1] == alone[1]
    assert ours[2] == alone[2]  # every train/ value, exactly
    assert th.equal(ours[3], alone[3])  # Adam's state too


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_every_member_is_bit_identical_alone_and_among_any_companions(env_id: str) -> None:
    """K=8 against K=1 for the first, a middle and the last member (the last one's entries end the stacked tensors),
    on a discrete and a continuous env (one-column layers; normalisation)."""
    hyperparams = {**SMALL, **({"normalize": True} if env_id == "Pendulum-v1" else {})}
    member = dict(variant="clip", seed=5)
    members = [*COMPANIONS[:3], member, *COMPANIONS[3:]]
    together = Population(env_id, members, hyperparams=hyperparams, device="cpu").learn(768)
    for k in (0, 3, 7):
        alone = Population(env_id, [members[k]], hyperparams=hyperparams, device="cpu").learn(768)
        _assert_identical(_member(together, k), _member(alone, 0))
        if together.normalizer is not None and alone.normalizer is not None:
            assert np.array_equal(together.normalizer.obs_var[k], alone.normalizer.obs_var[0])
            assert np.array_equal(together.normalizer.ret_var[k], alone.normalizer.ret_var[0])
    stopped = members.index(COMPANIONS[1])
    assert together.logs[stopped]["train/n_updates"] < 3 * 12  # target_kl stopped it early: the test covers that path
    # ... and the comparison can fail: a member with another seed ended elsewhere
    assert not th.equal(together.policy.flat[3], together.policy.flat[7])


def test_a_pair_equals_each_alone_and_their_evaluations_too() -> None:
    """K=2 against K=1 (the smallest batched case), with evaluations between updates."""
    members = [dict(variant="clip_kl", seed=0, kl_target=0.003), dict(variant="kl", seed=0, learning_rate=3e-3)]
    pair = Population("CartPole-v1", members, hyperparams=SMALL, device="cpu").learn(512)
    pair_scores = pair.evaluate(2, deterministic=False)
    for k, member in enumerate(members):
        alone = Population("CartPole-v1", [member], hyperparams=SMALL, device="cpu").learn(512)
        _assert_identical(_member(pair, k), _member(alone, 0))
        assert pair_scores[k] == alone.evaluate(2, deterministic=False)[0]
        assert pair.kl_controllers[k].value == alone.kl_controllers[0].value


def test_member_streams_are_independent_and_envs_are_seeded_as_a_solo_run() -> None:
    streams = MemberStreams.from_seed(3, th.device("cpu"))
    draws = [
        th.empty(64).normal_(generator=streams.action_noise),
        th.empty(64).normal_(generator=streams.evaluation_noise),
        th.from_numpy(streams.minibatch_order.standard_normal(64)).float(),
    ]
    th.manual_seed(streams.init_seed)
    draws.append(th.randn(64))
    th.manual_seed(3)  # SB3 seeds torch with the seed itself: the member's init is not that stream
    draws.append(th.randn(64))
    draws.append(th.from_numpy(np.random.default_rng(3).standard_normal(64)).float())  # nor numpy's default_rng(seed)
    for i in range(len(draws)):
        for j in range(i + 1, len(draws)):
            assert not th.allclose(draws[i], draws[j]), (i, j)  # different streams: the draws differ
    # consecutive seeds do not share streams (make_vec_env's env streams do: seed 0's env 1 is seed 1's env 0)
    other = MemberStreams.from_seed(4, th.device("cpu"))
    assert not th.equal(th.empty(8).normal_(generator=other.action_noise), draws[0][:8])
    pop = Population("CartPole-v1", [dict(seed=3), dict(seed=9)], hyperparams=SMALL, device="cpu")
    assert pop.envs.seeds == [3, 4, 9, 10]


def _diverging(seed: int) -> dict[str, Any]:
    # a learning rate beyond float32's range: the first Adam step would make the parameters infinite
    return dict(seed=seed, learning_rate=1e39)


def test_a_failed_member_fails_alone_and_the_others_train_on_unchanged(tmp_path: Path) -> None:
    healthy = [dict(seed=0), dict(variant="clip_kl", seed=1)]
    with_failure = Population("CartPole-v1", [healthy[0], _diverging(2), healthy[1]], hyperparams=SMALL, device="cpu")
    with_failure.learn(512)
    without = Population("CartPole-v1", healthy, hyperparams=SMALL, device="cpu").learn(512)
    assert with_failure.failures[0] is None and with_failure.failures[2] is None
    failure = with_failure.failures[1]
    assert failure is not None and failure.check == "parameters" and failure.update == 1 and failure.timestep == 128
    assert "member 1 (clip, seed 2) failed at timestep 128 (policy update 1)" in str(failure)
    for k, k_alone in ((0, 0), (2, 1)):
        _assert_identical(_member(with_failure, k), _member(without, k_alone))
    assert th.isfinite(with_failure.policy.flat[1]).all()  # its last finite parameters
    assert with_failure.episode_timesteps[1] and max(with_failure.episode_timesteps[1]) <= 128  # recorded until it failed
    assert max(with_failure.episode_timesteps[0]) > 128
    scores = with_failure.evaluate(1)
    assert np.isnan(scores[1]) and np.isfinite(scores[[0, 2]]).all()
    models = with_failure.models()
    assert models[1].failure is failure and models[0].failure is None  # type: ignore[attr-defined]
    assert th.equal(
        th.nn.utils.parameters_to_vector(models[1].policy.parameters()),
        th.nn.utils.parameters_to_vector(with_failure.policy.member_state_dict(1).values()),
    )
    with_failure.save(tmp_path / "population.pt")
    loaded = Population.load(tmp_path / "population.pt", device="cpu")
    assert loaded.failures == with_failure.failures and loaded.collector.stopped.tolist() == [False, True, False]


def test_a_non_finite_loss_is_caught_and_learn_raises_only_when_every_member_failed() -> None:
    # Adam steps of ~1e20 leave finite parameters whose value predictions (~1e21) square beyond float32's range
    members = [dict(seed=0, learning_rate=1e20), _diverging(1)]
    pop = Population("CartPole-v1", members, hyperparams=SMALL, device="cpu")
    with pytest.raises(NonFiniteLossError, match="every member failed") as raised:
        pop.learn(1024)
    failures = pop.failures
    assert failures[0] is not None and failures[0].check == "loss", failures[0]
    assert not np.isfinite(list(failures[0].terms.values())).all() and th.isfinite(pop.policy.flat[0]).all()
    assert failures[1] is not None and failures[1].check == "parameters"
    assert str(failures[0]) in str(raised.value) and str(failures[1]) in str(raised.value)
    assert pop.num_timesteps == 128  # stopped after the update where the last member failed
    with pytest.raises(NonFiniteLossError):
        pop.learn(128)  # nothing left to train


def test_a_controller_object_shared_through_hyperparams_is_each_members_own() -> None:
    """kl_penalty may be a KLController instance; given once in hyperparams, each member gets its own copy."""
    hyperparams = {**SMALL, "kl_penalty": ProportionalKLController(0.5, kl_target=0.001, horizon=1000)}
    members = [dict(variant="variant_ppo", seed=0), dict(variant="variant_ppo", seed=1)]
    pair = Population("CartPole-v1", members, hyperparams=hyperparams, device="cpu").learn(384)
    assert pair.kl_controllers[0] is not pair.kl_controllers[1] is not hyperparams["kl_penalty"]
    assert hyperparams["kl_penalty"].value == 0.5  # the caller's object is untouched
    for k, member in enumerate(members):
        alone = Population("CartPole-v1", [member], hyperparams=hyperparams, device="cpu").learn(384)
        _assert_identical(_member(pair, k), _member(alone, 0))
        assert pair.kl_controllers[k].value == alone.kl_controllers[0].value != 0.5
    model = pair.models()[1]
    assert model.kl_penalty is model.kl_controller and model.kl_controller.value == pair.kl_controllers[1].value


def test_members_stay_bit_identical_with_hidden_widths_that_are_not_multiples_of_64() -> None:
    """Widths 25 and 40, 24 envs, minibatches of 32: a member's block of 600 activations in collection (24 x 25) is not
    a multiple of 16 float32 (one AVX-512 vector), so the last member's values lie at other offsets from the vector
    boundaries of elementwise kernels (tanh, its backward) beside companions than alone; it still matches its solo run."""
    hyperparams = dict(n_steps=16, n_envs=24, batch_size=32, n_epochs=2, policy_kwargs=dict(net_arch=[25, 40]))
    members = [dict(variant="clip", seed=seed) for seed in range(3)]
    together = Population("CartPole-v1", members, hyperparams=hyperparams, device="cpu").learn(768)
    alone = Population("CartPole-v1", members[2:], hyperparams=hyperparams, device="cpu").learn(768)
    _assert_identical(_member(together, 2), _member(alone, 0))


def test_members_train_alike_whatever_the_chunks_of_the_update(monkeypatch: pytest.MonkeyPatch) -> None:
    """The update runs its forward and backward passes in chunks of members (``trainer.CHUNK_BYTES`` of activations):
    the eight members of mixed settings in one chunk, as by default here, and one per chunk give identical numbers.
    Chunks of one member leave chunks without a KL penalty beside chunks with one."""
    members = [*COMPANIONS[:3], dict(variant="clip", seed=5), *COMPANIONS[3:]]
    whole = Population("CartPole-v1", members, hyperparams=SMALL, device="cpu").learn(768)
    assert trainer.CHUNK_BYTES // (SMALL["batch_size"] * whole.policy.widest * 4) >= len(members)  # one chunk
    monkeypatch.setattr(trainer, "CHUNK_BYTES", 1)
    chunked = Population("CartPole-v1", members, hyperparams=SMALL, device="cpu").learn(768)
    for k in range(len(members)):
        _assert_identical(_member(chunked, k), _member(whole, k))
    assert not th.equal(whole.policy.flat[0], whole.policy.flat[1])  # the members differ: the comparison can fail
