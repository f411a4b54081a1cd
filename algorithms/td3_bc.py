"""TD3+BC: offline pretraining from a Minari dataset (Fujimoto & Gu 2021, "A Minimalist Approach to Offline
Reinforcement Learning", arXiv 2106.06860).

TD3 (Fujimoto et al. 2018) with one change to the actor loss, a behaviour-cloning term towards dataset actions:

    pi = argmax_pi  E_(s,a)~D [ lambda * Q1(s, pi(s)) - (pi(s) - a)^2 ],   lambda = alpha / mean|Q1(s, pi(s))|   (Eq. 3)

and states normalized with the dataset's mean and std (Eq. 5). Everything else is TD3: twin critics trained on
the clipped double-Q target with target-policy smoothing, a delayed actor and Polyak-averaged target networks.

Run: `python algorithms/td3_bc.py --env hopper` (see `--help`). Output in `runs/<run-name>/`: `args.json`
(resolved args + run metadata), `metrics.csv`, and `checkpoint.pt` (everything needed to continue or finetune).
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
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
from offline_data import load_dataset, make_eval_env, normalized_score, resolve_dataset_id  # noqa: E402


@dataclass
class Args:
    env: str = "hopper"
    """shorthand for the official Minari dataset `mujoco/<env>/medium-v0`: hopper, halfcheetah or walker2d"""
    dataset_id: str | None = None
    """any Minari dataset id (e.g. `standin/hopper/medium-v0`); wins over --env"""
    seed: int = 0
    """seeds Python, NumPy, torch and the evaluation episodes; same seed + same machine => identical run on CPU"""
    device: str = "auto"
    """`auto` (cuda if available, else cpu), `cpu` or `cuda`"""
    threads: int = 0
    """torch intra-op threads; 0 keeps torch's default (recorded in args.json)"""
    offline_steps: int = 1_000_000
    """TD3+BC gradient steps on the dataset (0 skips the phase)"""
    online_steps: int = 0
    """environment steps of online finetuning after the offline phase (not implemented in this script yet: 0)"""
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
    """width of the two hidden layers of actor and critics"""
    policy_noise: float = 0.2
    """std of the target-policy smoothing noise (times max action)"""
    noise_clip: float = 0.5
    """the smoothing noise is clipped to +-noise_clip (times max action)"""
    policy_freq: int = 2
    """actor and target networks are updated every policy_freq critic updates"""
    eval_every: int = 5_000
    """evaluate (and checkpoint) every this many gradient steps, and at the last step"""
    eval_episodes: int = 10
    """episodes per evaluation; episode i is seeded from (--seed, i) only"""
    log_every: int = 1_000
    """write a metrics row (losses averaged since the last row) every this many steps"""
    run_name: str | None = None
    """default: `<dataset id with / replaced by ->__td3_bc__<seed>__<unix time>`"""
    runs_dir: str = "runs"
    """parent folder of the run directory; an existing run directory is an error, never overwritten"""


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
def update(step: int, batch, actor, actor_target, critic, critic_target, actor_opt, critic_opt, args) -> dict:
    """One TD3+BC gradient step on batch = (s, a, r, s', terminated) with r, terminated of shape (B, 1);
    returns detached scalar tensors (no host sync)."""
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
        lmbda = args.alpha / q_pi.abs().mean().detach()  # lambda = alpha / mean|Q(s, pi(s))|
        bc_loss = ((pi - act) ** 2).mean()
        actor_loss = -lmbda * q_pi.mean() + bc_loss  # Eq. 3
        actor_opt.zero_grad(set_to_none=True)
        actor_loss.backward(inputs=list(actor.parameters()))  # gradients for the actor only
        actor_opt.step()
        with torch.no_grad():  # Polyak averaging, theta' <- theta' + tau * (theta - theta')
            torch._foreach_lerp_(list(actor_target.parameters()), list(actor.parameters()), args.tau)
            torch._foreach_lerp_(list(critic_target.parameters()), list(critic.parameters()), args.tau)
        info.update(actor_loss=actor_loss.detach(), bc_loss=bc_loss.detach(), lmbda=lmbda)
    return info


def evaluate(actor, env, obs_mean, obs_std, seed: int, episodes: int, device) -> np.ndarray:
    """Undiscounted returns of the deterministic actor; episode i is reset with a seed derived from (seed, i)
    only, so the same weights always get the same score."""
    returns = []
    for i in range(episodes):
        obs, _ = env.reset(seed=int(np.random.SeedSequence([seed, i]).generate_state(1)[0]))
        done, ret = False, 0.0
        while not done:
            with torch.no_grad():
                a = actor(torch.as_tensor((obs - obs_mean) / obs_std, dtype=torch.float32, device=device))
            obs, r, terminated, truncated, _ = env.step(a.cpu().numpy())
            ret += float(r)
            done = terminated or truncated
        returns.append(ret)
    return np.array(returns)


def save_checkpoint(path: Path, state: dict) -> None:
    """Atomic write: a reader never sees a half-written checkpoint."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def run_metadata(device: torch.device) -> dict:
    here = os.path.dirname(os.path.abspath(__file__))
    def git(*cmd):
        try:
            return subprocess.run(["git", "-C", here, *cmd], capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None
    return {"git_commit": git("rev-parse", "HEAD"), "git_dirty": bool(git("status", "--porcelain")),
            "packages": {p: version(p) for p in ("torch", "numpy", "gymnasium", "mujoco", "minari", "tyro")},
            "python": sys.version.split()[0], "torch_threads": torch.get_num_threads(), "device": str(device),
            "command": " ".join(sys.argv), "start_time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def validate(args: Args) -> None:
    for name in ("offline_steps", "online_steps"):
        if getattr(args, name) < 0:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    for name in ("batch_size", "eval_every", "eval_episodes", "log_every", "policy_freq", "hidden"):
        if getattr(args, name) <= 0:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    if args.threads < 0:
        raise SystemExit(f"error: --threads must be >= 0, got {args.threads}")
    if args.device not in ("auto", "cpu", "cuda"):
        raise SystemExit(f"error: --device must be auto, cpu or cuda, got {args.device!r}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda, but torch sees no CUDA device")
    if args.online_steps > 0:
        raise SystemExit("error: --online-steps > 0 is not implemented in td3_bc.py yet; use 0")


if __name__ == "__main__":
    args = tyro.cli(Args, description=__doc__.split("\n\n")[0])
    validate(args)
    dataset_id = resolve_dataset_id(args.env, args.dataset_id)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    run_name = args.run_name or f"{dataset_id.replace('/', '-')}__td3_bc__{args.seed}__{int(time.time())}"
    run_dir = Path(args.runs_dir) / run_name
    if run_dir.exists():
        raise SystemExit(f"error: run directory {run_dir} already exists; choose another --run-name or --runs-dir")
    args = dataclasses.replace(args, dataset_id=dataset_id, run_name=run_name, device=str(device))
    if args.threads:
        torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)

    # ------------------------------------------------------------------ data: on the device, states normalized
    data = load_dataset(dataset_id)
    obs_mean, obs_std = data.obs_mean_std()
    act_space = data.dataset.action_space
    if not np.allclose(act_space.low, -act_space.high):
        raise SystemExit(f"error: TD3 needs a symmetric action space, dataset has {act_space}")
    obs_dim, act_dim = data.obs.shape[1], data.actions.shape[1]
    to_dev = lambda x: torch.as_tensor(x, dtype=torch.float32, device=device)  # noqa: E731
    # one (N, 2*obs_dim + act_dim + 2) table, so a batch is one gather: [s | a | r | s' | terminated]
    table = torch.cat([to_dev((data.obs - obs_mean) / obs_std), to_dev(data.actions), to_dev(data.rewards[:, None]),
                       to_dev((data.next_obs - obs_mean) / obs_std), to_dev(data.terminated[:, None])], 1)
    split = [obs_dim, act_dim, 1, obs_dim, 1]
    n_data = table.shape[0]
    eval_env = make_eval_env(data.dataset)

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

    # ------------------------------------------------------------------ outputs
    run_dir.mkdir(parents=True)
    (run_dir / "args.json").write_text(json.dumps({"args": dataclasses.asdict(args), "meta": run_metadata(device)},
                                                  indent=2))
    columns = ["phase", "step", "critic_loss", "actor_loss", "bc_loss", "q_mean", "lmbda", "eval_return",
               "eval_return_std", "eval_score", "updates_per_s", "elapsed_s"]
    metrics_file = open(run_dir / "metrics.csv", "w", newline="")
    metrics = csv.DictWriter(metrics_file, fieldnames=columns)
    metrics.writeheader()
    print(f"TD3+BC on {dataset_id}: {n_data} transitions, device {device}, {torch.get_num_threads()} threads, "
          f"run dir {run_dir}", flush=True)

    def checkpoint(step: int) -> None:
        save_checkpoint(run_dir / "checkpoint.pt", {
            "algorithm": "td3_bc", "phase": "offline", "step": step, "args": dataclasses.asdict(args),
            "dataset_id": dataset_id, "env_spec": data.dataset.spec.env_spec.to_json(),
            "obs_shape": tuple(data.dataset.observation_space.shape), "act_shape": tuple(act_space.shape),
            "obs_mean": obs_mean, "obs_std": obs_std,
            "actor": actor.state_dict(), "critic": critic.state_dict(), "actor_target": actor_target.state_dict(),
            "critic_target": critic_target.state_dict(), "actor_opt": actor_opt.state_dict(),
            "critic_opt": critic_opt.state_dict(),
            "rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}})

    # ------------------------------------------------------------------ offline training loop
    start = t_last = time.perf_counter()
    sums, counts, train_time = {}, {}, 0.0
    for step in range(1, args.offline_steps + 1):
        idx = torch.randint(n_data, (args.batch_size,), device=device)  # uniform with replacement
        batch = table[idx].split(split, dim=1)
        info = update(step, batch, actor, actor_target, critic, critic_target, actor_opt, critic_opt, args)
        for k, v in info.items():  # running sums stay on the device until a metrics row is written
            sums[k] = sums.get(k, 0.0) + v
            counts[k] = counts.get(k, 0) + 1

        is_eval = step % args.eval_every == 0 or step == args.offline_steps
        if step % args.log_every == 0 or is_eval:
            now = time.perf_counter()
            train_time += now - t_last
            row = {k: float(sums[k]) / counts[k] for k in sums}
            row.update(phase="offline", step=step, updates_per_s=counts["critic_loss"] / (now - t_last))
            sums, counts = {}, {}
            if is_eval:
                returns = evaluate(actor, eval_env, obs_mean, obs_std, args.seed, args.eval_episodes, device)
                row.update(eval_return=returns.mean(), eval_return_std=returns.std(),
                           eval_score=float(normalized_score(data.dataset, returns).mean()))
                checkpoint(step)  # holds exactly the weights that were just evaluated
            row["elapsed_s"] = time.perf_counter() - start
            metrics.writerow(row)
            metrics_file.flush()
            eta = (args.offline_steps - step) * train_time / step
            score = f"score {row['eval_score']:6.1f} | " if is_eval else ""
            print(f"step {step:>8}/{args.offline_steps} | {score}critic {row['critic_loss']:9.3f} | "
                  f"Q {row['q_mean']:8.2f} | {row['updates_per_s']:6.0f} upd/s | ETA {eta / 60:5.1f} min", flush=True)
            t_last = time.perf_counter()

    if args.offline_steps == 0:  # nothing trained: still evaluate and checkpoint the initial weights
        returns = evaluate(actor, eval_env, obs_mean, obs_std, args.seed, args.eval_episodes, device)
        metrics.writerow({"phase": "offline", "step": 0, "eval_return": returns.mean(), "eval_return_std": returns.std(),
                          "eval_score": float(normalized_score(data.dataset, returns).mean()), "elapsed_s": 0.0})
        checkpoint(0)
    metrics_file.close()
    print(f"done in {(time.perf_counter() - start) / 60:.1f} min; checkpoint {run_dir / 'checkpoint.pt'}")
