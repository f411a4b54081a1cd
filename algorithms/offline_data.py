"""The one module the algorithm scripts share: load a Minari dataset into flat float32 transition arrays.

Minari does the storage, downloading, environment recovery and score normalization; this module only maps a
short env name to an official dataset id, turns episodes into (s, a, r, s', terminated) transitions, checks
them, and turns the usual failures into one readable line (`SystemExit`, non-zero exit, no traceback).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import gymnasium as gym
import minari
import numpy as np

# `--env NAME` is shorthand for the official Minari MuJoCo "medium" dataset of that environment.
ENV_TO_DATASET = {name: f"mujoco/{name}/medium-v0" for name in ("hopper", "halfcheetah", "walker2d")}


def resolve_dataset_id(env: str, dataset_id: str | None) -> str:
    """`--dataset-id` wins over `--env`; an unknown `--env` is an error."""
    if dataset_id:
        return dataset_id
    if env not in ENV_TO_DATASET:
        raise SystemExit(f"error: unknown --env {env!r}; choose one of {', '.join(ENV_TO_DATASET)}, "
                         f"or give any Minari dataset id with --dataset-id")
    return ENV_TO_DATASET[env]


@dataclass
class OfflineData:
    """Every transition of the dataset as float32 arrays of shape (N, ...); `terminated` is 1.0 only at true
    terminal states (a time-limit truncation is not terminal, so TD targets bootstrap through it)."""
    dataset: minari.MinariDataset
    obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_obs: np.ndarray
    terminated: np.ndarray

    def obs_mean_std(self, eps: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
        """State normalization statistics (TD3+BC, Fujimoto & Gu 2021, Eq. 5: s <- (s - mu) / (sigma + eps))."""
        return self.obs.mean(0), self.obs.std(0) + eps


def load_dataset(dataset_id: str) -> OfflineData:
    """Load (downloading if needed) and flatten a Minari dataset with Box observation and action spaces."""
    try:
        dataset = minari.load_dataset(dataset_id, download=True)
    except Exception as e:  # ConnectError after retries, OfflineModeIsEnabled, unknown remote id, ...
        where = os.environ.get("MINARI_DATASETS_PATH", "~/.minari/datasets")
        cause = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise SystemExit(f"error: Minari dataset {dataset_id!r} is not available: not found under {where} and "
                         f"the download failed ({type(e).__name__}: {cause}). Remedy: run `minari download "
                         f"{dataset_id}` on a machine with internet, or set MINARI_DATASETS_PATH to a folder "
                         f"that holds it.") from None
    obs_space, act_space = dataset.observation_space, dataset.action_space
    if not (isinstance(obs_space, gym.spaces.Box) and isinstance(act_space, gym.spaces.Box)):
        raise SystemExit(f"error: dataset {dataset_id!r} has {obs_space} observations and {act_space} actions; "
                         f"these scripts need flat Box spaces")
    parts = {k: [] for k in ("obs", "actions", "rewards", "next_obs", "terminated")}
    for ep in dataset.iterate_episodes():
        o, a = np.asarray(ep.observations), np.asarray(ep.actions)
        n = len(ep.rewards)
        if o.shape != (n + 1, *obs_space.shape) or a.shape != (n, *act_space.shape):
            raise SystemExit(f"error: dataset {dataset_id!r} episode {ep.id}: observations {o.shape} / actions "
                             f"{a.shape} disagree with the dataset spaces {obs_space.shape} / {act_space.shape} "
                             f"for {n} steps")
        # Minari stores T+1 observations per episode of T steps, so s'_t = s_{t+1} also at the last step.
        parts["obs"].append(o[:-1])
        parts["next_obs"].append(o[1:])
        parts["actions"].append(a)
        parts["rewards"].append(np.asarray(ep.rewards))
        parts["terminated"].append(np.asarray(ep.terminations))
    arrays = {k: np.concatenate(v).astype(np.float32) for k, v in parts.items()}
    for k, v in arrays.items():
        if not np.isfinite(v).all():
            raise SystemExit(f"error: dataset {dataset_id!r} has {int((~np.isfinite(v)).sum())} NaN/inf values in "
                             f"{k}; clean the data before training")
    return OfflineData(dataset=dataset, **arrays)


def make_eval_env(dataset: minari.MinariDataset) -> gym.Env:
    """The dataset's evaluation environment, exactly as its metadata recorded it."""
    return dataset.recover_environment(eval_env=True)


def make_env(dataset: minari.MinariDataset) -> gym.Env:
    """The environment the dataset was collected in (used for online interaction)."""
    return dataset.recover_environment()


def normalized_score(dataset: minari.MinariDataset, returns) -> np.ndarray:
    """D4RL normalized score x 100: 100 * (return - ref_min) / (ref_max - ref_min); NaN if the dataset has no
    reference scores."""
    md = dataset.storage.metadata
    if md.get("ref_min_score") is None or md.get("ref_max_score") is None:
        return np.full(np.shape(returns), np.nan)
    return 100.0 * minari.get_normalized_score(dataset, np.asarray(returns, dtype=np.float64))
