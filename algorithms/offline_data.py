"""The one module the algorithm scripts share: the offline data, the agents' checkpoints and the evaluation protocol,
so that every method trains on the same replay table, loads agents through one safe path and is scored the same way.

Minari does the storage, downloading, environment recovery and score normalization; this module maps a short env
name to an official dataset id, turns episodes into (s, a, r, s', terminated) transitions, checks them, puts them on
the device as one normalized replay table (`load_replay`), scores a policy on the dataset's evaluation environment
(`evaluate`), sums a run's evaluations up as policy-collapse statistics (`collapse_summary`), loads a checkpoint
without unpickling code and checks its fields (`load_checkpoint`, `check`), and turns the usual failures into one
readable line (`SystemExit`, non-zero exit, no traceback).
"""
from __future__ import annotations

import json
import os
import re
import socket
import zipfile
from dataclasses import dataclass
from urllib.parse import urlparse

import gymnasium as gym
import minari
import numpy as np
import torch
from minari.storage.datasets_root_dir import get_dataset_path

# `--env NAME` is shorthand for the official Minari MuJoCo "medium" dataset of that environment.
ENV_TO_DATASET = {name: f"mujoco/{name}/medium-v0" for name in ("hopper", "halfcheetah", "walker2d")}


def resolve_dataset_id(env: str | None, dataset_id: str | None) -> str:
    """`--dataset-id` wins over `--env`; an unknown `--env` is an error, whether or not `--dataset-id` is given."""
    if env is not None and env not in ENV_TO_DATASET:
        raise SystemExit(f"error: unknown --env {env!r}; choose one of {', '.join(ENV_TO_DATASET)}, "
                         f"or give any Minari dataset id with --dataset-id")
    return dataset_id or ENV_TO_DATASET[env]


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


def unreachable_download_host() -> str | None:
    """Why Minari's default remote (the Hugging Face Hub) cannot be reached, or None. One TCP connect with a 3 s
    timeout, so that a machine without network gets our one-line error at once instead of the Hub client's five
    retries (about 24 s and a dozen lines). Skipped behind a proxy, offline (HF_HUB_OFFLINE) or with another
    remote (MINARI_REMOTE): the download attempt itself then decides."""
    if os.environ.get("HF_HUB_OFFLINE") or not os.environ.get("MINARI_REMOTE", "hf://").startswith("hf://") or \
            any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=3.0).close()
        return None
    except OSError as e:
        return f"cannot reach {host}:{port}: {e.strerror or type(e).__name__}"


def load_dataset(dataset_id: str) -> OfflineData:
    """Load (downloading if needed) and flatten a Minari dataset with Box observation and action spaces."""
    where = os.environ.get("MINARI_DATASETS_PATH", "~/.minari/datasets")
    remedy = (f"Remedy: run `minari download {dataset_id}` on a machine with internet, or set MINARI_DATASETS_PATH "
              f"to a folder that holds it.")
    local = (get_dataset_path(dataset_id) / "data").exists()
    problem = None if local else unreachable_download_host()
    if problem:
        raise SystemExit(f"error: Minari dataset {dataset_id!r} is not available: not found under {where} and no "
                         f"download is possible ({problem}). {remedy}")
    try:
        dataset = minari.load_dataset(dataset_id, download=True)
    except Exception as e:  # ConnectError after retries, OfflineModeIsEnabled, unknown remote id, ...
        cause = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise SystemExit(f"error: Minari dataset {dataset_id!r} is not available: not found under {where} and "
                         f"the download failed ({type(e).__name__}: {cause}). {remedy}") from None
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


def has_reference_scores(dataset: minari.MinariDataset) -> bool:
    md = dataset.storage.metadata
    return md.get("ref_min_score") is not None and md.get("ref_max_score") is not None


def normalized_score(dataset: minari.MinariDataset, returns) -> np.ndarray:
    """D4RL normalized score x 100: 100 * (return - ref_min) / (ref_max - ref_min). A dataset without reference
    scores (any Minari id may lack them) gets the raw returns back: the scripts say so once when they start."""
    if not has_reference_scores(dataset):
        return np.asarray(returns, dtype=np.float64)
    return 100.0 * minari.get_normalized_score(dataset, np.asarray(returns, dtype=np.float64))


def load_replay(dataset_id: str, ckpt: dict | None, source, capacity: int, device):
    """The dataset; its transitions (s, s' normalized) on the device as a table of rows [s | a | r | s' | terminated]
    with `capacity` rows for online ones after them (a batch is one gather); the column split; checkpoint info."""
    data = load_dataset(dataset_id)
    obs_space, act_space = data.dataset.observation_space, data.dataset.action_space
    env_spec = data.dataset.spec.env_spec
    if ckpt and (tuple(ckpt["obs_shape"]), tuple(ckpt["act_shape"]), json.loads(ckpt["env_spec"])["id"]) != \
            (obs_space.shape, act_space.shape, env_spec.id):
        raise SystemExit(f"error: checkpoint {source} was made for {json.loads(ckpt['env_spec'])['id']} with "
                         f"observations {tuple(ckpt['obs_shape'])} and actions {tuple(ckpt['act_shape'])}, but dataset "
                         f"{dataset_id} is {env_spec.id} with {obs_space.shape} and {act_space.shape}")
    if not np.allclose(act_space.low, -act_space.high):
        raise SystemExit(f"error: TD3 needs a symmetric action space, dataset has {act_space}")
    mean, std = (ckpt["obs_mean"], ckpt["obs_std"]) if ckpt else data.obs_mean_std()
    columns = [(data.obs - mean) / std, data.actions, data.rewards[:, None], (data.next_obs - mean) / std,
               data.terminated[:, None]]
    split = [c.shape[1] for c in columns]
    replay = torch.empty(len(data.obs) + capacity, sum(split), device=device)
    replay[:len(data.obs)] = torch.cat([torch.as_tensor(c, dtype=torch.float32, device=device) for c in columns], 1)
    return data, replay, split, {"dataset_id": dataset_id, "env_spec": env_spec.to_json(), "obs_shape": obs_space.shape,
                                 "act_shape": act_space.shape, "obs_mean": mean, "obs_std": std}


def evaluate(actor, envs: list, obs_mean, obs_std, seed: int, device) -> np.ndarray:
    """Undiscounted returns of the deterministic actor, one episode per env, side by side (one batched actor call a
    step); episode i is reset with a seed from (seed, i) only, so the same weights always get the same score."""
    obs = np.stack([env.reset(seed=int(np.random.SeedSequence([seed, i]).generate_state(1)[0]))[0]
                    for i, env in enumerate(envs)])
    returns, done = np.zeros(len(envs)), np.zeros(len(envs), dtype=bool)
    while not done.all():
        with torch.no_grad():  # every row, finished or not: a fixed batch shape gives the same rounding each step
            act = actor(torch.as_tensor((obs - obs_mean) / obs_std, dtype=torch.float32, device=device)).cpu().numpy()
        for i in np.flatnonzero(~done):
            obs[i], r, terminated, truncated, _ = envs[i].step(act[i])
            returns[i] += float(r)
            done[i] = terminated or truncated
    return returns


def collapse_summary(evals: list[tuple[int, float]], window: int) -> dict:
    """Policy-collapse statistics (summary.json) from online evaluations [(online step, score), ...] from step 0."""
    step0, lowest = evals[0][1], min((s for t, s in evals if 0 < t <= window), default=None)
    dip = max(0.0, step0 - lowest) if lowest is not None else 0.0
    # recovery: steps until the first evaluation at or above the step-0 score after the first one below it
    first_below = next((t for t, s in evals if t > 0 and s < step0), None)
    recovery = next((t for t, s in evals if t > first_below and s >= step0), None) if dip > 0 else 0
    return {"step0_score": step0, "min_score_in_window": lowest, "collapse_window": window, "dip": dip,
            "recovery_steps": recovery, "final_score": evals[-1][1], "final_step": evals[-1][0]}


# ------------------------------------------------------------------------------- checkpoints, loaded safely
# A checkpoint holds tensors, plain Python data and numpy arrays: torch.load(weights_only=True) builds exactly those
# and refuses anything else (no code runs), once numpy's array constructor is allowed. numpy 2 and 1.x name its
# module differently, and a checkpoint keeps the name of the numpy that wrote it.
_reconstruct = (getattr(np, "_core", None) or np.core).multiarray._reconstruct
SAFE_GLOBALS = [np.ndarray, np.dtype, *(type(np.dtype(t)) for t in ("float32", "uint32")),
                *((_reconstruct, f"numpy.{module}.multiarray._reconstruct") for module in ("_core", "core"))]
AGENT_FIELDS = {"args": {"hidden": int, "seed": int}, "dataset_id": str, "env_spec": str, "obs_shape": tuple,
                "act_shape": tuple, "obs_mean": np.ndarray, "obs_std": np.ndarray,
                **dict.fromkeys(("actor", "critic", "actor_target", "critic_target", "actor_opt", "critic_opt"), dict)}


def load_checkpoint(path: str, dataset_id: str | None, ensembles: bool = False) -> dict:
    """A checkpoint of these scripts for a requested dataset id (None: any); an ensemble only when `ensembles`.
    Nothing in it is trusted: every record's CRC-32 is checked first (torch.save writes one per record, in the same
    file, so a changed byte is found), then it is loaded safely, then the fields an agent needs are checked."""
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
        if damaged is not None:
            raise ValueError(f"record {damaged} fails its CRC-32 check: the file is damaged")
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch explains a refusal at length, around a line or two that say what it was
        text = str(e).replace("WeightsUnpickler error: ", "")
        refused = re.search(r"GLOBAL ([\w.]+)", text)
        lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith(
            ("Weights only load failed", "Check the documentation", "\t"))] or [type(e).__name__]
        raise SystemExit(f"error: cannot read checkpoint {path}: " + (
            f"refused: it asks to run {refused[1].rstrip('.')} when loaded (a checkpoint of these scripts holds only "
            f"tensors, plain data and numpy arrays; nothing in it was run)" if refused else
            f"{type(e).__name__}: {lines[0]}")) from None
    check(f"error: checkpoint {path}", ckpt, AGENT_FIELDS)
    if ckpt.get("ensemble_size") and not ensembles:
        raise SystemExit(f"error: {path} holds an ensemble of {ckpt['ensemble_size']} agents (balanced_replay.py); "
                         f"start from one agent: a checkpoint of td3_bc.py, naive_ft.py or conservative_ft.py")
    if dataset_id and dataset_id != ckpt["dataset_id"]:
        raise SystemExit(f"error: the requested dataset {dataset_id} (--env/--dataset-id) differs from the "
                         f"checkpoint's dataset {ckpt['dataset_id']}")
    return ckpt


def check(where: str, obj, spec: dict, path: str = "") -> None:
    """One line and exit 1 unless `obj` holds each field of `spec` with a value of its type (a type, a union such as
    `int | None`, or a dict: a nested spec, checked inside). Used on everything read back from disk before its use."""
    for key, kind in spec.items():
        name = f"{path}{key}"
        if not isinstance(obj, dict) or key not in obj:
            raise SystemExit(f"{where}: field {name!r} is missing")
        expected = dict if isinstance(kind, dict) else kind
        if not isinstance(obj[key], expected):
            raise SystemExit(f"{where}: field {name!r} is {type(obj[key]).__name__}, not "
                             f"{getattr(expected, '__name__', expected)}")
        if isinstance(kind, dict):
            check(where, obj[key], kind, name + ".")
