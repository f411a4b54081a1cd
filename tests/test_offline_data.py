"""The shared loader: flattening, episode boundaries, truncation vs termination, checks, errors."""
import minari
import numpy as np
import pytest
from conftest import HOPPER_ID, TINY_ID, collect_episodes, make_dataset

import offline_data


def test_resolve_dataset_id():
    assert offline_data.resolve_dataset_id("hopper", None) == "mujoco/hopper/medium-v0"
    assert offline_data.resolve_dataset_id("walker2d", None) == "mujoco/walker2d/medium-v0"
    assert offline_data.resolve_dataset_id("hopper", "standin/hopper/random-v0") == "standin/hopper/random-v0"
    assert offline_data.resolve_dataset_id(None, "standin/hopper/random-v0") == "standin/hopper/random-v0"
    for dataset_id in (None, "standin/hopper/random-v0"):  # a bad --env is an error even where --dataset-id wins
        with pytest.raises(SystemExit, match="unknown --env 'ant'"):
            offline_data.resolve_dataset_id("ant", dataset_id)


def test_flatten_counts_and_boundaries(minari_root):
    data = offline_data.load_dataset(TINY_ID)
    episodes = list(minari.load_dataset(TINY_ID).iterate_episodes())
    n = sum(len(ep.rewards) for ep in episodes)
    assert data.obs.shape == (n, 11) and data.next_obs.shape == (n, 11) and data.actions.shape == (n, 3)
    assert data.rewards.shape == (n,) and data.terminated.shape == (n,)
    assert all(a.dtype == np.float32 for a in (data.obs, data.actions, data.rewards, data.next_obs, data.terminated))
    start = 0
    for ep in episodes:
        end = start + len(ep.rewards)
        np.testing.assert_array_equal(data.obs[start:end], ep.observations[:-1].astype(np.float32))
        np.testing.assert_array_equal(data.next_obs[start:end], ep.observations[1:].astype(np.float32))
        # the last transition's next state is the episode's final observation, not the next episode's first
        np.testing.assert_array_equal(data.next_obs[end - 1], ep.observations[-1].astype(np.float32))
        if end < n:  # ... which differs from the state that starts the next episode
            assert not np.array_equal(data.next_obs[end - 1], data.obs[end])
        np.testing.assert_array_equal(data.rewards[start:end], np.float32(ep.rewards))
        start = end


def test_truncation_is_not_termination(minari_root):
    data = offline_data.load_dataset(TINY_ID)
    episodes = list(minari.load_dataset(TINY_ID).iterate_episodes())
    ends = np.cumsum([len(ep.rewards) for ep in episodes]) - 1
    for ep, end in zip(episodes, ends):
        assert data.terminated[end] == float(ep.terminations[-1])
        if ep.truncations[-1]:
            assert data.terminated[end] == 0.0  # time limit: keep bootstrapping
    assert data.terminated.sum() == sum(bool(ep.terminations[-1]) for ep in episodes) >= 1
    assert sum(bool(ep.truncations[-1]) for ep in episodes) >= 1
    # no transition inside an episode is terminal
    inner = np.ones(len(data.terminated), bool)
    inner[ends] = False
    assert data.terminated[inner].sum() == 0


def test_obs_normalization_stats(minari_root):
    data = offline_data.load_dataset(TINY_ID)
    mean, std = data.obs_mean_std()
    np.testing.assert_allclose(mean, data.obs.mean(0), rtol=1e-6)
    np.testing.assert_allclose(std, data.obs.std(0) + 1e-3, rtol=1e-6)


def test_normalized_score_matches_minari(minari_root):
    ds = minari.load_dataset(TINY_ID)
    returns = np.array([10.0, 60.0, 110.0, 1234.5])
    np.testing.assert_allclose(offline_data.normalized_score(ds, returns), [0.0, 50.0, 100.0, 1224.5])
    np.testing.assert_allclose(offline_data.normalized_score(ds, returns), 100 * minari.get_normalized_score(ds, returns))


def test_env_recovery(minari_root):
    ds = minari.load_dataset(HOPPER_ID)
    env = offline_data.make_eval_env(ds)
    assert env.spec.id == "Hopper-v5" and env.observation_space.shape == (11,)


def test_nan_data_rejected(minari_root):
    make_dataset("test/hopper/nan-v0", collect_episodes(nan_at=3))
    with pytest.raises(SystemExit, match=r"test/hopper/nan-v0.*NaN/inf values in obs"):
        offline_data.load_dataset("test/hopper/nan-v0")


def test_shape_mismatch_rejected(minari_root):
    import gymnasium as gym

    # declared 12-dim observations, stored 11-dim ones
    make_dataset("test/hopper/badshape-v0", collect_episodes(episodes=[(10, 0)]),
                 observation_space=gym.spaces.Box(-np.inf, np.inf, (12,), np.float64))
    with pytest.raises(SystemExit, match=r"badshape-v0.*disagree with the dataset spaces"):
        offline_data.load_dataset("test/hopper/badshape-v0")


def test_missing_dataset_message(minari_root):
    with pytest.raises(SystemExit) as e:
        offline_data.load_dataset("nowhere/hopper/missing-v0")
    msg = str(e.value)
    assert "nowhere/hopper/missing-v0" in msg and "minari download nowhere/hopper/missing-v0" in msg
    assert "MINARI_DATASETS_PATH" in msg and "OfflineModeIsEnabled" in msg and "\n" not in msg
