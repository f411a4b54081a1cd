"""Shared fixtures: tiny *real* Minari datasets built with Minari's own API in a temporary MINARI_DATASETS_PATH.

No test reads the stand-in or official datasets, and no test touches the network (HF_HUB_OFFLINE=1)."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
ALGOS = ROOT / "algorithms"
sys.path.insert(0, str(ALGOS))
os.environ["HF_HUB_OFFLINE"] = "1"  # a missing dataset fails at once instead of retrying a download

TINY_ID = "test/hopper/tiny-v0"
HOPPER_ID = "mujoco/hopper/medium-v0"  # what `--env hopper` resolves to
REF_MIN, REF_MAX = 10.0, 110.0  # so that normalized score = return - 10
# (step limit, reset seed) per episode: short limits end in truncation, long ones in the hopper falling over
EPISODES = [(200, 0), (12, 1), (200, 2), (20, 3), (200, 4), (15, 5)]


def collect_episodes(episodes=EPISODES, nan_at=None):
    """Random-action Hopper-v5 episodes as Minari EpisodeBuffers; an episode that reaches its step limit
    without falling is cut there and marked truncated."""
    from minari.data_collector import EpisodeBuffer

    env = gym.make("Hopper-v5")
    env.action_space.seed(0)
    buffers = []
    for ep_id, (limit, seed) in enumerate(episodes):
        obs, _ = env.reset(seed=seed)
        o, a, r, term, trunc = [obs], [], [], [], []
        for t in range(limit):
            act = env.action_space.sample()
            obs, rew, terminated, _, _ = env.step(act)
            o.append(obs), a.append(act), r.append(float(rew)), term.append(bool(terminated))
            trunc.append(not terminated and t == limit - 1)
            if terminated:
                break
        o = np.array(o)
        if nan_at is not None and ep_id == 0:
            o[nan_at] = np.nan
        buffers.append(EpisodeBuffer(id=ep_id, seed=seed, observations=o, actions=np.array(a), rewards=r,
                                     terminations=term, truncations=trunc))
    return buffers


def make_dataset(dataset_id, buffers, reference_scores=True, **kw):
    import minari

    if reference_scores:
        kw.update(ref_min_score=REF_MIN, ref_max_score=REF_MAX)
    return minari.create_dataset_from_buffers(dataset_id, buffers, env="Hopper-v5", algorithm_name="random", author="tests",
                                              author_email="none", description="tiny test dataset", code_permalink="none",
                                              eval_env="Hopper-v5", **kw)


@pytest.fixture(scope="session")
def minari_root(tmp_path_factory):
    """A MINARI_DATASETS_PATH holding the tiny dataset under TINY_ID and under the official hopper id."""
    root = tmp_path_factory.mktemp("minari_datasets")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    buffers = collect_episodes()
    assert any(b.terminations[-1] for b in buffers) and any(b.truncations[-1] for b in buffers)
    make_dataset(TINY_ID, buffers)
    make_dataset(HOPPER_ID, collect_episodes())
    return root


@pytest.fixture(scope="session")
def pretrained(minari_root, tmp_path_factory):
    """A short offline TD3+BC run (runs dir / "offline") whose checkpoint the finetuning scripts load."""
    runs = tmp_path_factory.mktemp("ft_runs")
    run_script("td3_bc.py", "--dataset-id", TINY_ID, "--offline-steps", "200", "--eval-every", "100",
               "--eval-episodes", "2", "--batch-size", "64", "--runs-dir", str(runs), "--run-name", "offline")
    return runs


def run_script(script: str, *args: str, check: bool = True, cwd=None) -> subprocess.CompletedProcess:
    """Run an algorithm script through its CLI, single-threaded, with the test datasets."""
    proc = subprocess.run([sys.executable, str(ALGOS / script), "--threads", "1", *args], capture_output=True,
                          text=True, env=dict(os.environ), cwd=cwd, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def read_metrics(path: Path, drop=("updates_per_s", "elapsed_s")) -> list[dict]:
    """Rows of a metrics CSV without the wall-clock columns (the only ones allowed to differ between runs)."""
    with open(path) as f:
        return [{k: v for k, v in row.items() if k not in drop} for row in csv.DictReader(f)]
