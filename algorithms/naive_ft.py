"""Naive finetuning: plain TD3 online, starting from a TD3+BC agent (the collapse-prone baseline of Luo et al. 2023).

Offline: TD3+BC (Fujimoto & Gu 2021) as in td3_bc.py, or load its checkpoint with `--checkpoint`. Online: TD3
(Fujimoto et al. 2018) from the pretrained actor, critics, targets (and, by default, Adam states); the actor
loss drops the behaviour-cloning term and simply maximizes the critic:

    L_actor = -mean Q1(s, pi(s))

Replay keeps the offline data: by default one shared buffer, uniform over offline + online transitions
(`--offline-ratio -1`, the common practice the paper starts from). One update per environment step, Gaussian
exploration noise 0.1, no random warm-up. Output in `runs/<run-name>/`: `args.json`, `metrics.csv` (with the
policy-collapse diagnostics), `episodes.csv`, `summary.json` (step-0 score, dip, recovery), `checkpoint.pt` and
`online_rows.f32`; `--resume RUN_DIR` continues a killed run exactly.
"""
from __future__ import annotations

import copy
import csv
import dataclasses
import hashlib
import json
import math
import os
import platform
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import tyro

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from offline_data import (has_reference_scores, load_dataset, make_env, make_eval_env, normalized_score,  # noqa: E402
                          resolve_dataset_id)


@dataclass
class Args:
    env: str | None = None
    """shorthand for the official Minari dataset `mujoco/<env>/medium-v0`: hopper (the default), halfcheetah or
    walker2d"""
    dataset_id: str | None = None
    """any Minari dataset id (e.g. `standin/hopper/medium-v0`); wins over --env. With --checkpoint, the
    checkpoint's id is used and a different one here is an error"""
    checkpoint: str | None = None
    """a td3_bc.py checkpoint.pt to start from (weights, optimizer states, normalization, dataset id)"""
    seed: int = 0
    """seeds Python, NumPy, torch, the online env and the evaluation episodes; same seed + same CPU model +
    same --threads => identical run on CPU"""
    device: str = "auto"
    """`auto` (cuda if available, else cpu), `cpu` or `cuda`"""
    threads: int = 0
    """torch intra-op threads; 0 keeps torch's default (recorded in args.json)"""
    offline_steps: int | None = None
    """TD3+BC gradient steps on the dataset; default 1,000,000, or 0 with --checkpoint (a value given with
    --checkpoint continues offline training from it first)"""
    online_steps: int = 250_000
    """environment steps of online finetuning after the offline phase, one update per step"""
    offline_ratio: float = -1.0
    """online phase: fraction r of every batch drawn from the offline data (round(r*B) rows), the rest from
    online transitions, uniformly with replacement; -1 samples uniformly from the union (one shared buffer)"""
    reset_optimizers: bool = False
    """start the online phase with fresh Adam states (default: keep the pretrained moments, as when simply
    continuing training; fresh moments make the first online steps about lr-sized for every weight)"""
    expl_noise: float = 0.1
    """std of the Gaussian exploration noise added to online actions (times max action)"""
    batch_size: int = 256
    """transitions per gradient step"""
    alpha: float = 2.5
    """TD3+BC's alpha: the Q term is scaled by lambda = alpha / mean|Q| (Eq. 3)"""
    gamma: float = 0.99
    """discount factor"""
    tau: float = 0.005
    """target networks: theta' <- tau * theta + (1 - tau) * theta'"""
    lr: float = 3e-4
    """Adam learning rate of actor and critics"""
    hidden: int = 256
    """width of the two hidden layers of actor and critics (with --checkpoint, the checkpoint's width is used)"""
    policy_noise: float = 0.2
    """std of the target-policy smoothing noise (times max action)"""
    noise_clip: float = 0.5
    """the smoothing noise is clipped to +-noise_clip (times max action)"""
    policy_freq: int = 2
    """actor and target networks are updated every policy_freq critic updates"""
    eval_every: int = 5_000
    """evaluate and checkpoint every this many steps of each phase, at each phase's last step and at online step 0"""
    eval_episodes: int = 10
    """episodes per evaluation, run side by side in as many envs (one batched actor call per step); episode i is
    seeded from (--seed, i) only"""
    log_every: int = 1_000
    """write a metrics row (losses averaged since the last row) every this many steps"""
    collapse_window: int = 50_000
    """online summary: the dip is the step-0 score minus the lowest evaluation within this many online steps"""
    run_name: str | None = None
    """default: `<dataset id with / replaced by ->__naive_ft__<seed>__<unix time>`"""
    runs_dir: str = "runs"
    """parent folder of the run directory; an existing run directory is an error, never overwritten"""
    resume: str | None = None
    """continue the interrupted run in this run directory, to the result an uninterrupted run gives (same machine,
    same --threads); its args.json supplies every other flag, and a flag given here must agree with it"""


# ---------------------------------------------------------------------------------------------- networks
class Actor(nn.Module):
    """Deterministic policy pi(s) = max_action * tanh(MLP(s))."""

    def __init__(self, obs_dim: int, act_dim: int, max_action: torch.Tensor, hidden: int = 256):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(obs_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, act_dim), nn.Tanh())
        self.register_buffer("max_action", max_action)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.max_action * self.net(obs)


class EnsembleLinear(nn.Module):
    """`n` independent linear layers applied with one batched matmul; initialised like nn.Linear."""

    def __init__(self, n: int, in_dim: int, out_dim: int):
        super().__init__()
        bound = 1.0 / math.sqrt(in_dim)
        self.weight = nn.Parameter(torch.empty(n, in_dim, out_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(n, 1, out_dim).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor, n: int) -> torch.Tensor:  # (n, B, in) -> (n, B, out)
        if n == self.weight.shape[0]:  # all members: no slicing (a slice's backward allocates and copies)
            return torch.baddbmm(self.bias, x, self.weight)
        return torch.baddbmm(self.bias[:n], x, self.weight[:n])


class Critic(nn.Module):
    """Twin Q-networks (Q1, Q2) as one 2-member ensemble: each layer of both runs as one batched matmul."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 256, n: int = 2):
        super().__init__()
        self.n = n
        self.layers = nn.ModuleList([EnsembleLinear(n, obs_dim + act_dim, hidden), EnsembleLinear(n, hidden, hidden),
                                     EnsembleLinear(n, hidden, 1)])

    def forward(self, obs: torch.Tensor, act: torch.Tensor, n: int | None = None) -> torch.Tensor:
        """Q-values of the first `n` members (default all), shape (n, B)."""
        n = n or self.n
        x = torch.cat([obs, act], -1).expand(n, -1, -1)
        for i, layer in enumerate(self.layers):
            x = layer(x, n)
            x = torch.relu(x) if i < len(self.layers) - 1 else x
        return x.squeeze(-1)


# ---------------------------------------------------------------------------------------------- one update
def update(step: int, batch, actor, actor_target, critic, critic_target, actor_opt, critic_opt, args,
           offline: bool) -> dict:
    """One gradient step on batch = (s, a, r, s', terminated) with r, terminated of shape (B, 1): TD3+BC when
    `offline`, else TD3. Returns detached scalar tensors (no host sync)."""
    obs, act, rew, next_obs, terminated = batch
    rew, terminated = rew.squeeze(-1), terminated.squeeze(-1)
    with torch.no_grad():
        # target-policy smoothing: a' = clip(pi'(s') + clip(eps, -c, c), -max, max), eps ~ N(0, sigma^2)
        max_action = actor.max_action
        noise = (torch.randn_like(act) * args.policy_noise).clamp(-args.noise_clip, args.noise_clip) * max_action
        next_act = torch.max(torch.min(actor_target(next_obs) + noise, max_action), -max_action)
        # clipped double-Q target: y = r + gamma * (1 - terminated) * min_i Q'_i(s', a')
        target_q = rew + args.gamma * (1.0 - terminated) * critic_target(next_obs, next_act).min(0).values
    q = critic(obs, act)  # (2, B)
    critic_loss = ((q - target_q) ** 2).mean(1).sum()  # MSE(Q1, y) + MSE(Q2, y)
    critic_opt.zero_grad(set_to_none=True)
    critic_loss.backward()
    critic_opt.step()
    info = {"critic_loss": critic_loss.detach(), "q_mean": q.detach().mean()}

    if step % args.policy_freq == 0:  # delayed policy update
        pi = actor(obs)
        q_pi = critic(obs, pi, n=1)[0]
        if offline:  # TD3+BC pretraining (Fujimoto & Gu 2021, Eq. 3)
            lmbda = args.alpha / q_pi.abs().mean().detach()  # lambda = alpha / mean|Q(s, pi(s))|
            reg_loss = ((pi - act) ** 2).mean()  # behaviour cloning towards the dataset actions
        else:  # TD3 finetuning: maximize Q1(s, pi(s)), nothing holds the policy near the data
            lmbda, reg_loss = torch.ones((), device=obs.device), torch.zeros((), device=obs.device)
        actor_loss = -lmbda * q_pi.mean() + reg_loss
        actor_opt.zero_grad(set_to_none=True)
        actor_loss.backward(inputs=list(actor.parameters()))  # gradients for the actor only
        actor_opt.step()
        with torch.no_grad():  # Polyak averaging, theta' <- theta' + tau * (theta - theta')
            torch._foreach_lerp_(list(actor_target.parameters()), list(actor.parameters()), args.tau)
            torch._foreach_lerp_(list(critic_target.parameters()), list(critic.parameters()), args.tau)
        info.update(actor_loss=actor_loss.detach(), reg_loss=reg_loss.detach(), lmbda=lmbda)
    return info


# ---------------------------------------------------------------------------------------------- helpers
def replay_indices(n_off: int, n_on: int, batch_size: int, ratio: float, device) -> torch.Tensor:
    """Rows of a replay table holding n_off offline rows, then n_on online rows. Without online rows: uniform
    over the offline data. Otherwise round(ratio * B) offline rows + the rest online rows, each uniform with
    replacement, or (ratio = -1) uniform over the union, as one shared buffer would sample."""
    if n_on == 0:
        return torch.randint(n_off, (batch_size,), device=device)
    if ratio < 0:
        return torch.randint(n_off + n_on, (batch_size,), device=device)
    k = round(ratio * batch_size)
    return torch.cat([torch.randint(n_off, (k,), device=device),
                      n_off + torch.randint(n_on, (batch_size - k,), device=device)])


def evaluate(actor, envs: list, obs_mean, obs_std, seed: int, device) -> np.ndarray:
    """Undiscounted returns of the deterministic actor, one episode per env, all run side by side with one batched
    actor call per step; episode i is reset with a seed derived from (seed, i) only, so the same weights always
    get the same score."""
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
    """Policy-collapse statistics from online evaluations [(online step, score), ...] starting at step 0."""
    step0 = evals[0][1]
    in_window = [s for t, s in evals if 0 < t <= window]
    lowest = min(in_window) if in_window else None
    dip = max(0.0, step0 - lowest) if in_window else 0.0
    recovery = 0
    if dip > 0:  # steps until the first evaluation at or above the step-0 score after the first one below it
        first_below = next(t for t, s in evals if t > 0 and s < step0)
        recovery = next((t for t, s in evals if t > first_below and s >= step0), None)
    return {"step0_score": step0, "min_score_in_window": lowest, "collapse_window": window, "dip": dip,
            "recovery_steps": recovery, "final_score": evals[-1][1], "final_step": evals[-1][0]}


CHECKPOINT_FORMAT = 2  # 1 (no "format" key): written before --resume existed; loads with --checkpoint, not --resume


def atomic_save(path: Path, obj) -> None:
    """Write a temporary file, flush it to disk, then rename it: a kill leaves the old file or the new one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(obj.encode()) if isinstance(obj, str) else torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: str, dataset_id: str | None, ensembles: bool = False) -> dict:
    """A checkpoint of these scripts, checked against an explicitly requested dataset id (None: any); one of
    balanced_replay.py's ensembles only when `ensembles` (a --resume)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)  # only load checkpoints you trust
    except Exception as e:
        raise SystemExit(f"error: cannot read checkpoint {path}: {type(e).__name__}: {str(e).splitlines()[0]}") from None
    if not isinstance(ckpt, dict) or not {"actor", "critic", "dataset_id", "obs_shape"} <= ckpt.keys():
        raise SystemExit(f"error: {path} is not a checkpoint written by these scripts")
    if ckpt.get("ensemble_size") and not ensembles:
        raise SystemExit(f"error: {path} holds an ensemble of {ckpt['ensemble_size']} agents (balanced_replay.py); "
                         f"start from one agent: a checkpoint of td3_bc.py, naive_ft.py or conservative_ft.py")
    if dataset_id and dataset_id != ckpt["dataset_id"]:
        raise SystemExit(f"error: the requested dataset {dataset_id} (--env/--dataset-id) differs from the "
                         f"checkpoint's dataset {ckpt['dataset_id']}")
    return ckpt


def weights_sha256(ckpt: dict) -> str:
    """sha256 over the network tensors (actor, critics, targets) in a fixed order: equal hashes mean bit-identical
    weights (`scripts/report.py --hash CHECKPOINT` prints the same)."""
    h = hashlib.sha256()
    for net in ("actor", "critic", "actor_target", "critic_target"):
        for key in sorted(ckpt[net]):
            h.update(f"{net}/{key}".encode())
            h.update(ckpt[net][key].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def load_run(run_dir: str, script: str) -> tuple[dict, dict | None]:
    """What --resume continues: the run's args.json (all of it) and its last checkpoint (None: killed before the
    first one)."""
    try:
        saved = json.loads((Path(run_dir) / "args.json").read_text())
    except OSError:
        raise SystemExit(f"error: --resume {run_dir}: no run there (no args.json)") from None
    except ValueError:
        raise SystemExit(f"error: --resume {run_dir}: its args.json is not valid JSON (truncated?)") from None
    made_by = saved.get("algorithm") if isinstance(saved, dict) else None
    if made_by is None:
        raise SystemExit(f"error: --resume {run_dir}: not a resumable run (written by an older version of these "
                         f"scripts, or by another program); continue its weights with --checkpoint instead")
    if made_by != script:
        raise SystemExit(f"error: --resume {run_dir}: that run was made by {made_by}.py; resume it with {made_by}.py")
    if not (Path(run_dir) / "checkpoint.pt").exists():
        return saved, None
    state = load_checkpoint(str(Path(run_dir) / "checkpoint.pt"), None, ensembles=True)
    if state.get("format") != CHECKPOINT_FORMAT or state.get("algorithm") != script:
        raise SystemExit(f"error: --resume {run_dir}: its checkpoint is format {state.get('format', 1)} of "
                         f"{state.get('algorithm')}, this script resumes format {CHECKPOINT_FORMAT} of {script}")
    return saved, state


def resume_args(cli, saved: dict, description: str):
    """The resumed run's Args, from its args.json; a flag given with --resume must agree with it."""
    try:
        base = dataclasses.replace(type(cli)(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()}),
                                   resume=cli.resume)
    except TypeError as e:
        raise SystemExit(f"error: --resume {cli.resume}: its args.json does not fit this script's flags ({e})") from None
    merged = tyro.cli(type(cli), default=base, description=description)
    for f in dataclasses.fields(merged):
        if getattr(merged, f.name) != getattr(base, f.name):
            raise SystemExit(f"error: --{f.name.replace('_', '-')} {getattr(merged, f.name)} contradicts the resumed "
                             f"run's args.json ({getattr(base, f.name)}); --resume continues a run as it was started")
    return merged


def reopen(path: Path, size: int | None, header: list[str]):
    """A run file to append CSV rows to: new (size None), or cut back to the size its checkpoint recorded."""
    if size is None:
        f = open(path, "w", newline="")
        csv.writer(f).writerow(header)
        return f
    if not path.exists() or path.stat().st_size < size:
        raise SystemExit(f"error: {path} is shorter than its checkpoint records: the run directory is incomplete")
    os.truncate(path, size)  # drop rows written after the checkpoint
    return open(path, "a", newline="")


def save_online_rows(path: Path, replay, n_off: int, capacity: int, first: int, n_on: int) -> None:
    """Append online transitions first..n_on-1 to the run's append-only row file (transition k lives in replay row
    n_off + k % capacity; ones a ring already overwrote are written as zeros: a resume never reads them)."""
    rows = torch.zeros(n_on - first, replay.shape[1])
    lo = max(first, n_on - capacity)
    rows[lo - first:] = replay[n_off + torch.arange(lo, n_on, device=replay.device) % capacity].cpu()
    with open(path, "ab") as f:
        f.write(rows.numpy().tobytes())
        f.flush()
        os.fsync(f.fileno())


def load_online_rows(path: Path, replay, n_off: int, capacity: int, n_on: int) -> np.ndarray:
    """Put the first n_on transitions of the row file back into the replay table, dropping any rows after them."""
    size = n_on * replay.shape[1] * 4
    if not path.exists() or path.stat().st_size < size:
        raise SystemExit(f"error: {path} holds fewer than the {n_on} online rows its checkpoint records: the run "
                         f"directory is incomplete")
    os.truncate(path, size)
    rows = np.fromfile(path, dtype=np.float32).reshape(n_on, replay.shape[1])
    lo = max(0, n_on - capacity)
    replay[n_off + torch.arange(lo, n_on, device=replay.device) % capacity] = torch.from_numpy(rows[lo:]).to(replay.device)
    return rows


def replay_episode(env, seed: int, reset_state: dict | None, actions: np.ndarray) -> np.ndarray:
    """The online env mid-episode, rebuilt exactly: reset it as the episode was reset (the first with --seed, later
    ones from the env's RNG state just before their reset), then step through the episode's actions. Any env whose
    dynamics are deterministic given its RNG comes back, including state outside the simulator (MuJoCo's warm-start
    accelerations, targets drawn at reset, the time limit's step count). Returns the last observation."""
    obs, _ = env.reset(seed=seed)
    if reset_state is not None:
        env.unwrapped.np_random.bit_generator.state = reset_state
        obs, _ = env.reset()
    for a in actions:
        obs, *_ = env.step(a)
    return obs


def run_metadata(device: torch.device) -> dict:
    here = os.path.dirname(os.path.abspath(__file__))
    def git(*cmd):
        try:
            return subprocess.run(["git", "-C", here, *cmd], capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None
    return {"git_commit": git("rev-parse", "HEAD"),  # dirty: a tracked file differs (benchmarks/ run files aside)
            "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no", "--", ":(top,exclude)benchmarks")),
            "packages": {p: version(p) for p in ("torch", "numpy", "gymnasium", "mujoco", "minari", "tyro")},
            "python": sys.version.split()[0], "torch_threads": torch.get_num_threads(), "device": str(device),
            "cpu": cpu_name(), "command": " ".join(sys.argv), "start_time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "env": {k: v for k, v in sorted(os.environ.items())  # those that pick math code paths (README)
                    if k == "LD_PRELOAD" or k.startswith(("MKL_", "OMP_", "ONEDNN_", "ATEN_CPU"))}}


def cpu_name() -> str:
    """The CPU model and the kernels torch picks for it: bit-identical results need the same code paths, not only the
    same seed and threads (math libraries choose them, and so their rounding, by CPU; MKL by vendor: README)."""
    try:  # the first processor's block of /proc/cpuinfo (Linux)
        info = dict(map(str.strip, line.split(":", 1)) for line in
                    Path("/proc/cpuinfo").read_text().split("\n\n")[0].splitlines() if ":" in line)
    except OSError:
        info = {}
    isa = [f for f in ("avx2", "avx512f", "avx512_fp16", "amx_tile") if f in info.get("flags", "").split()]
    return (f"{info.get('vendor_id', '')} {info.get('model name') or platform.processor() or platform.machine()} "
            f"(family {info.get('cpu family', '?')} model {info.get('model', '?')} stepping {info.get('stepping', '?')}; "
            f"{' '.join(isa) or 'no avx2'}; torch kernels {torch.backends.cpu.get_cpu_capability()})").strip()


def validate(args: Args) -> None:
    for name in ("offline_steps", "online_steps", "expl_noise"):
        if getattr(args, name) is not None and getattr(args, name) < 0:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    for name in ("batch_size", "eval_every", "eval_episodes", "log_every", "policy_freq", "hidden", "collapse_window"):
        if getattr(args, name) <= 0:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    if not (0.0 <= args.offline_ratio <= 1.0 or args.offline_ratio == -1.0):
        raise SystemExit(f"error: --offline-ratio must be in [0, 1], or -1 for uniform over all data, "
                         f"got {args.offline_ratio}")
    if args.threads < 0:
        raise SystemExit(f"error: --threads must be >= 0, got {args.threads}")
    if args.device not in ("auto", "cpu", "cuda"):
        raise SystemExit(f"error: --device must be auto, cpu or cuda, got {args.device!r}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda, but torch sees no CUDA device")
    if args.checkpoint and not args.resume and not os.path.isfile(args.checkpoint):
        raise SystemExit(f"error: checkpoint {args.checkpoint} does not exist")


if __name__ == "__main__":
    args = tyro.cli(Args, description=__doc__.split("\n\n")[0])
    script = Path(__file__).stem
    saved, state = load_run(args.resume, script) if args.resume else (None, None)  # state: the run's last checkpoint
    args = resume_args(args, saved["args"], __doc__.split("\n\n")[0]) if args.resume else args
    validate(args)
    requested = resolve_dataset_id(args.env, args.dataset_id) if args.env or args.dataset_id else None
    ckpt = state or (load_checkpoint(args.checkpoint, requested) if args.checkpoint else None)
    dataset_id = ckpt["dataset_id"] if ckpt else requested or resolve_dataset_id("hopper", None)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    run_name = args.run_name or f"{dataset_id.replace('/', '-')}__{script}__{args.seed}__{int(time.time())}"
    run_dir = Path(args.resume) if args.resume else Path(args.runs_dir) / run_name
    if run_dir.exists() and not args.resume:
        raise SystemExit(f"error: run directory {run_dir} already exists; choose another --run-name or --runs-dir, "
                         f"or continue it with --resume {run_dir}")
    args = dataclasses.replace(args, dataset_id=dataset_id, run_name=run_name, device=str(device),
                               offline_steps=(0 if ckpt else 1_000_000) if args.offline_steps is None else args.offline_steps,
                               hidden=ckpt["args"]["hidden"] if ckpt else args.hidden)
    if args.threads:
        torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)

    # ------------------------------------------------------------------ data: on the device, states normalized
    data = load_dataset(dataset_id)
    obs_space, act_space = data.dataset.observation_space, data.dataset.action_space
    env_spec = data.dataset.spec.env_spec.to_json()
    if ckpt and (tuple(ckpt["obs_shape"]) != obs_space.shape or tuple(ckpt["act_shape"]) != act_space.shape
                 or json.loads(ckpt["env_spec"])["id"] != json.loads(env_spec)["id"]):
        raise SystemExit(f"error: checkpoint {args.checkpoint} was made for {json.loads(ckpt['env_spec'])['id']} with "
                         f"observations {tuple(ckpt['obs_shape'])} and actions {tuple(ckpt['act_shape'])}, but dataset "
                         f"{dataset_id} is {data.dataset.spec.env_spec.id} with {obs_space.shape} and {act_space.shape}")
    if not np.allclose(act_space.low, -act_space.high):
        raise SystemExit(f"error: TD3 needs a symmetric action space, dataset has {act_space}")
    obs_mean, obs_std = (ckpt["obs_mean"], ckpt["obs_std"]) if ckpt else data.obs_mean_std()
    obs_dim, act_dim = data.obs.shape[1], data.actions.shape[1]
    to_dev = lambda x: torch.as_tensor(x, dtype=torch.float32, device=device)  # noqa: E731
    # replay table, one row per transition [s | a | r | s' | terminated] so a batch is one gather:
    # the n_off offline rows first, then room for every online transition
    split = [obs_dim, act_dim, 1, obs_dim, 1]
    n_off, n_on, capacity = data.obs.shape[0], 0, args.online_steps
    replay = torch.empty(n_off + capacity, sum(split), device=device)
    replay[:n_off] = torch.cat([to_dev((data.obs - obs_mean) / obs_std), to_dev(data.actions),
                                to_dev(data.rewards[:, None]), to_dev((data.next_obs - obs_mean) / obs_std),
                                to_dev(data.terminated[:, None])], 1)
    eval_envs, env = [make_eval_env(data.dataset) for _ in range(args.eval_episodes)], make_env(data.dataset)

    def sample(online: bool):
        idx = replay_indices(n_off, n_on if online else 0, args.batch_size, args.offline_ratio, device)
        return replay[idx].split(split, dim=1)

    # ------------------------------------------------------------------ networks and optimizers
    max_action = to_dev(act_space.high)
    actor = Actor(obs_dim, act_dim, max_action, args.hidden).to(device)
    critic = Critic(obs_dim, act_dim, args.hidden).to(device)
    actor_target = Actor(obs_dim, act_dim, max_action, args.hidden).to(device).requires_grad_(False)
    critic_target = Critic(obs_dim, act_dim, args.hidden).to(device).requires_grad_(False)
    actor_target.load_state_dict(actor.state_dict())
    critic_target.load_state_dict(critic.state_dict())
    fused = {"fused": True}  # one fused Adam kernel for all parameters (same math as the for-loop Adam)
    actor_opt = torch.optim.Adam(actor.parameters(), lr=args.lr, **fused)
    critic_opt = torch.optim.Adam(critic.parameters(), lr=args.lr, **fused)
    if ckpt:  # continue from the checkpoint: weights, targets and optimizer states
        for name, obj in (("actor", actor), ("critic", critic), ("actor_target", actor_target),
                          ("critic_target", critic_target), ("actor_opt", actor_opt), ("critic_opt", critic_opt)):
            obj.load_state_dict(ckpt[name])
    pretrained_actor = None  # pi_0: frozen copy of the actor when the online phase starts
    if state and state["pretrained_actor"] is not None:
        pretrained_actor = copy.deepcopy(actor).requires_grad_(False)
        pretrained_actor.load_state_dict(state["pretrained_actor"])

    # ------------------------------------------------------------------ outputs
    run_dir.mkdir(parents=True, exist_ok=bool(args.resume))
    run_info = saved if args.resume else \
        {"algorithm": script, "args": dataclasses.asdict(args), "meta": run_metadata(device), "resumes": [],
         "checkpoint_sha256": weights_sha256(ckpt) if ckpt else None}  # the agent a --checkpoint run starts from
    if args.resume:  # the run's args stay as they were; each resume adds when, where from, with which code
        run_info["resumes"].append({"from": f"{state['phase']} step {state['step']}" if state else "the start",
                                    "meta": run_metadata(device)})
    atomic_save(run_dir / "args.json", json.dumps(run_info, indent=2))
    columns = ["phase", "step", "critic_loss", "actor_loss", "reg_loss", "q_mean", "lmbda", "pi_dist",
               "q_pi_offline", "q_pi_online", "train_return", "eval_return", "eval_return_std", "eval_score",
               "updates_per_s", "elapsed_s"]
    sizes = state["run"]["files"] if state else {}
    metrics_file = reopen(run_dir / "metrics.csv", sizes.get("metrics.csv"), columns)
    metrics = csv.DictWriter(metrics_file, fieldnames=columns)
    episodes_file = reopen(run_dir / "episodes.csv", sizes.get("episodes.csv"), ["step", "return", "length", "score"])
    episodes = csv.writer(episodes_file)
    rows_file, rows_saved = run_dir / "online_rows.f32", 0  # online transitions, appended at each checkpoint
    if not state:
        rows_file.unlink(missing_ok=True)
    print(f"{script} on {dataset_id}: {n_off} offline transitions, device {device}, {torch.get_num_threads()} "
          f"threads, run dir {run_dir}", flush=True)
    if not has_reference_scores(data.dataset):
        print(f"note: {dataset_id} has no reference scores: every score here (progress, eval_score, episodes.csv, "
              f"summary.json) is a raw return", flush=True)

    def checkpoint(phase: str, step: int) -> None:
        """Everything the rest of the run depends on, written after the metrics row of this step."""
        global rows_saved, last_checkpoint
        metrics_file.flush()
        episodes_file.flush()
        if phase == "online":
            save_online_rows(rows_file, replay, n_off, capacity, rows_saved, n_on)
            rows_saved = n_on
        atomic_save(run_dir / "checkpoint.pt", {
            "format": CHECKPOINT_FORMAT, "algorithm": script, "phase": phase, "step": step,
            "args": dataclasses.asdict(args), "dataset_id": dataset_id, "env_spec": env_spec,
            "obs_shape": tuple(obs_space.shape), "act_shape": tuple(act_space.shape), "obs_mean": obs_mean,
            "obs_std": obs_std, "actor": actor.state_dict(), "critic": critic.state_dict(),
            "actor_target": actor_target.state_dict(), "critic_target": critic_target.state_dict(),
            "actor_opt": actor_opt.state_dict(), "critic_opt": critic_opt.state_dict(),
            "pretrained_actor": pretrained_actor.state_dict() if pretrained_actor else None,
            "rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                    "diagnostics": diag_gen.get_state()},
            "run": {"files": {n: (run_dir / n).stat().st_size for n in ("metrics.csv", "episodes.csv")},
                    "evals": evals, "n_on": n_on, "elapsed_s": time.perf_counter() - start,
                    "reset_state": reset_state, "obs": obs_t,
                    "episode": (ep_return, ep_len, recent_returns)}})
        last_checkpoint = f"{phase} step {step}"

    sums, counts, evals, last_checkpoint = {}, {}, [], None
    obs_t, ep_return, ep_len, recent_returns = None, 0.0, 0, []  # online: normalized s on the device, episode so far
    reset_state = None  # the env RNG state before the current episode's reset (None: the first, seeded reset)
    diag_gen = torch.Generator(device=device).manual_seed(args.seed)  # diagnostics never touch the training RNG
    off_done, on_done = 0, None  # steps already done in each phase (None: the online phase has not begun)
    if state:  # --resume: the rest of the state the checkpoint holds; the RNGs last, right before the loop
        run, phase, last_checkpoint = state["run"], state["phase"], f"{state['phase']} step {state['step']}"
        off_done = state["step"] if phase == "offline" else args.offline_steps
        evals, n_on, rows_saved = run["evals"], run["n_on"], run["n_on"]
        if phase == "online":
            on_done, obs_t, (ep_return, ep_len, recent_returns) = state["step"], run["obs"].to(device), run["episode"]
            rows, reset_state = load_online_rows(rows_file, replay, n_off, capacity, n_on), run["reset_state"]
            obs = replay_episode(env, args.seed, reset_state, rows[n_on - ep_len:, obs_dim:obs_dim + act_dim])
            if not torch.equal(to_dev((obs - obs_mean) / obs_std), obs_t):  # exactness check of the replayed episode
                raise SystemExit(f"error: --resume {run_dir}: replaying the current episode did not reproduce the "
                                 f"checkpointed observation (is the env deterministic?); cannot resume exactly")
        random.setstate(state["rng"]["python"])
        np.random.set_state(state["rng"]["numpy"])
        torch.set_rng_state(state["rng"]["torch"])
        if device.type == "cuda":
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        diag_gen.set_state(state["rng"]["diagnostics"])
        print(f"resuming from the checkpoint at {last_checkpoint}", flush=True)
    start = time.perf_counter() - (state["run"]["elapsed_s"] if state else 0.0)
    t_last = phase_start = time.perf_counter()
    row_from, phase_from = 1, 0  # first step of the current metrics row's window; step at which this process began the phase

    def nan_guard(phase: str, step: int, action=None) -> None:
        """Stop with one line if a loss of the current metrics window, or the action about to be taken, is not
        finite. A NaN/inf loss poisons its window's device sum, which the host reads only at metrics rows."""
        bad = [k for k in sums if not math.isfinite(float(sums[k]))] + \
            (["action"] if action is not None and not np.isfinite(action).all() else [])
        if bad:
            raise SystemExit(f"error: non-finite {', '.join(bad)} in {phase} steps {row_from}-{step}: stopped; "
                             + (f"the last checkpoint ({last_checkpoint}) is untouched, continue it with --resume "
                                f"{run_dir}" if last_checkpoint else "no checkpoint was written yet"))

    def log(phase: str, step: int, last: int, info: dict | None, extra: dict | None = None) -> None:
        """Accumulate update info on the device; every --log-every steps (and at evaluations) write a row."""
        global sums, counts, t_last, row_from
        for k, v in (info or {}).items():
            sums[k], counts[k] = sums.get(k, 0.0) + v, counts.get(k, 0) + 1
        is_eval = step % args.eval_every == 0 or step == last
        if step % args.log_every and not is_eval:
            return
        row = {k: float(sums[k]) / counts[k] for k in sums}  # the host reads the device sums here only
        row.update(phase=phase, step=step, **(extra or {}))
        if counts:
            row["updates_per_s"] = counts["critic_loss"] / (time.perf_counter() - t_last)
        if not all(math.isfinite(row[k]) for k in sums):  # the bad row is logged, then the guard stops the run
            metrics.writerow(row)
            metrics_file.flush()
            nan_guard(phase, step)
        sums, counts, row_from = {}, {}, step + 1
        if is_eval:
            returns = evaluate(actor, eval_envs, obs_mean, obs_std, args.seed, device)
            row.update(eval_return=returns.mean(), eval_return_std=returns.std(),
                       eval_score=float(normalized_score(data.dataset, returns).mean()))
            if phase == "online":
                evals.append((step, row["eval_score"]))
        row["elapsed_s"] = time.perf_counter() - start
        metrics.writerow(row)
        if is_eval:
            checkpoint(phase, step)  # holds exactly the weights that were just evaluated
        score = f"score {row['eval_score']:6.1f} | " if is_eval else ""
        speed = f"{row['updates_per_s']:6.0f} upd/s | " if "updates_per_s" in row else ""
        eta = f"ETA {(time.perf_counter() - phase_start) / (step - phase_from) * (last - step) / 60:5.1f} min" \
            if step > phase_from else ""
        print(f"{phase:>7} step {step:>8}/{last} | {score}{speed}{eta}", flush=True)
        t_last = time.perf_counter()

    # ------------------------------------------------------------------ offline phase: TD3+BC on the dataset
    phase_from, row_from = off_done, off_done + 1
    for step in range(off_done + 1, args.offline_steps + 1):
        info = update(step, sample(online=False), actor, actor_target, critic, critic_target, actor_opt,
                      critic_opt, args, offline=True)
        log("offline", step, args.offline_steps, info)
    if args.offline_steps == 0 and args.online_steps == 0 and not state:  # nothing to train: evaluate as they are
        log("offline", 0, 0, None)

    # ------------------------------------------------------------------ online phase: act, store, update
    if args.online_steps > 0:
        if on_done is None:  # the handoff: pi_0, the first reset, the step-0 evaluation (and checkpoint)
            pretrained_actor = copy.deepcopy(actor).requires_grad_(False)
            if args.reset_optimizers:  # fresh Adam moments for the online phase
                actor_opt = torch.optim.Adam(actor.parameters(), lr=args.lr, **fused)
                critic_opt = torch.optim.Adam(critic.parameters(), lr=args.lr, **fused)
            obs, _ = env.reset(seed=args.seed)
            obs_t = to_dev((obs - obs_mean) / obs_std)  # the normalized observation, uploaded once per step
            log("online", 0, args.online_steps, None)  # step 0: the pretrained policy before any online update
        phase_start, phase_from, row_from = time.perf_counter(), on_done or 0, (on_done or 0) + 1
        for step in range((on_done or 0) + 1, args.online_steps + 1):
            with torch.no_grad():  # a = clip(pi(s) + N(0, (sigma * max_action)^2))
                a = actor(obs_t)
                a = (a + torch.randn_like(a) * args.expl_noise * max_action).clamp(-max_action, max_action)
            action = a.cpu().numpy()
            if not np.isfinite(action).all():  # non-finite weights: stop before the env sees the action
                nan_guard("online", step, action)
            next_obs, reward, terminated, truncated, _ = env.step(action)
            # a truncated step is stored as non-terminal: its target still bootstraps from s'
            # [r | normalized s' | terminated] in one upload; s' is then reused as the next step's s
            r_s2_term = to_dev(np.concatenate([[reward], (next_obs - obs_mean) / obs_std, [terminated]]))
            next_t = r_s2_term[1:-1]
            replay[n_off + n_on] = torch.cat([obs_t, a, r_s2_term])
            n_on += 1
            ep_return, ep_len, obs_t = ep_return + float(reward), ep_len + 1, next_t
            if terminated or truncated:
                score = float(normalized_score(data.dataset, ep_return))
                episodes.writerow([step, ep_return, ep_len, score])
                recent_returns.append(ep_return)
                reset_state = env.unwrapped.np_random.bit_generator.state  # how this episode starts (for --resume)
                obs, _ = env.reset()
                obs_t = to_dev((obs - obs_mean) / obs_std)
                ep_return, ep_len = 0.0, 0
            info = update(step, sample(online=True), actor, actor_target, critic, critic_target, actor_opt,
                          critic_opt, args, offline=False)
            extra = None
            if step % args.log_every == 0 or step % args.eval_every == 0 or step == args.online_steps:
                with torch.no_grad():  # collapse diagnostics on fresh offline and online states
                    s_off = replay[torch.randint(n_off, (1024,), device=device, generator=diag_gen), :obs_dim]
                    s_on = replay[n_off + torch.randint(n_on, (1024,), device=device, generator=diag_gen), :obs_dim]
                    s = torch.cat([s_off, s_on])
                    pi = actor(s)
                    q_pi = critic(s, pi, n=1)[0]
                    extra = {"pi_dist": float((pi - pretrained_actor(s)).norm(dim=-1).mean()),
                             "q_pi_offline": float(q_pi[:1024].mean()), "q_pi_online": float(q_pi[1024:].mean()),
                             "train_return": float(np.mean(recent_returns)) if recent_returns else None}
                episodes_file.flush()
                recent_returns = []
            log("online", step, args.online_steps, info, extra)

        summary = {**collapse_summary(evals, args.collapse_window),
                   "score": "normalized" if has_reference_scores(data.dataset) else "raw return"}
        atomic_save(run_dir / "summary.json", json.dumps(summary, indent=2))
        print("summary: " + " | ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in summary.items()))
    metrics_file.close()
    episodes_file.close()
    print(f"done in {(time.perf_counter() - start) / 60:.1f} min; checkpoint {run_dir / 'checkpoint.pt'}")
