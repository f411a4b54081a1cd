"""Balanced replay and a pessimistic Q-ensemble: TD3 finetuning of an ensemble of pretrained agents whose replay is
prioritized by a learned density ratio d_online / d_offline (Lee, Seo, Lee, Abbeel & Shin, "Offline-to-Online
Reinforcement Learning via Balanced Replay and Pessimistic Q-Ensemble", CoRL 2021, arXiv 2107.00591).

Details follow the authors' code (shlee94/Off2OnRL; README.md, "Balanced replay", lists them with their flags): one
prioritized buffer (all offline rows, a ring of --online-capacity online ones) sampled through a sum tree on the
device (SumTree), priorities w^(1/T) from a density-ratio network w ~ d_online / d_offline (DensityRatio), and
--warmup-online-steps with the pretrained policy, then --warmup-updates updates, then one per environment step.
Pessimistic Q-ensemble, our TD3 reading of the authors' SAC ensemble of N = --ensemble-size agents:
    acting:  a(s) = mean_i pi_i(s)
    target:  y_i = r + gamma (1 - d) min(Q'_i1, Q'_i2)(s', a'),  a' = clip(mean_i pi'_i(s') + clip(eps))
    critic:  sum_i [MSE(Q_i1, y_i) + MSE(Q_i2, y_i)]   on one shared prioritized batch
    actor:   maximize mean_i min(Q_i1, Q_i2)(s, a(s))   through the mean action (the members' actors train jointly)
Every member keeps its own twin critics, targets and Adam moments, all batched (one matmul per layer for all
members); N = 1 is balanced replay alone. README.md lists what metrics.csv logs besides naive_ft.py's columns.
"""
import copy
import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import platform
import random
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import torch.nn as nn
import tyro
from offline_data import (check, collapse_summary, evaluate, has_reference_scores, load_checkpoint, load_replay,
                          make_env, make_eval_env, normalized_score, resolve_dataset_id)


@dataclasses.dataclass
class Args:
    env: str | None = None
    """shorthand for the official Minari dataset mujoco/<env>/medium-v0: hopper, halfcheetah, walker2d (None: hopper)"""
    dataset_id: str | None = None
    """any Minari dataset id (e.g. standin/hopper/medium-v0); wins over --env; with --checkpoint, must be its own"""
    checkpoint: Annotated[tuple[str, ...], tyro.conf.UseAppendAction] = ()
    """an agent's checkpoint.pt (td3_bc, naive_ft or conservative_ft) for member 0; again for members 1, 2, ..."""
    ensemble_size: int = 5
    """N: agents in the pessimistic Q-ensemble (5, as the authors); members without --checkpoint are pretrained here"""
    seed: int = 0
    """seeds everything: same seed, CPU model and --threads give an identical run on a CPU"""
    device: str = "auto"
    """auto (cuda if available, else cpu), cpu or cuda"""
    threads: int = 0
    """torch intra-op threads; 0: as many as torch picks (args.json records the number used)"""
    offline_steps: int | None = None
    """TD3+BC steps of the members pretrained here, side by side (None: 1,000,000, or 0 when all have --checkpoint)"""
    online_steps: int = 250_000
    """environment steps of online finetuning after the offline phase, one update per step"""
    online_capacity: int = 250_000
    """online transitions kept in the prioritized buffer (a ring: the oldest are overwritten)"""
    temperature: float = 5.0
    """T: priorities are w^(1/T) / mean_offline(w^(1/T))"""
    init_online_fraction: float = 0.5
    """f: the first 1000 online transitions start with this fraction of the total priority mass"""
    warmup_online_steps: int = 1_000
    """online transitions collected with the pretrained policy before the first update"""
    warmup_updates: int = 10_000
    """updates run once the warm-up transitions are in (the authors' 10x first epoch); then one per step"""
    ratio_batch_size: int = 256
    """online and offline transitions (each) in the density-ratio estimator's batch"""
    ratio_lr: float = 3e-4
    """Adam learning rate of the density-ratio estimator"""
    reset_optimizers: bool = False
    """start the online phase with fresh Adam states instead of the pretrained moments"""
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
    """Adam learning rate of actors and critics"""
    hidden: int = 256
    """width of the two hidden layers of actors and critics (with --checkpoint, the checkpoint's)"""
    policy_noise: float = 0.2
    """std of the target-policy smoothing noise (times max action)"""
    noise_clip: float = 0.5
    """the smoothing noise is clipped to +-noise_clip (times max action)"""
    policy_freq: int = 2
    """actor and target networks are updated every policy_freq critic updates"""
    eval_every: int = 5_000
    """evaluate and checkpoint every this many steps of each phase, at its last step and at online step 0"""
    eval_episodes: int = 10
    """episodes per evaluation, run side by side; episode i is seeded from (--seed, i) only"""
    log_every: int = 1_000
    """write a metrics row (each value's mean since the last row) every this many steps"""
    collapse_window: int = 50_000
    """summary.json: the dip is the step-0 score minus the lowest evaluation within this many online steps"""
    run_name: str | None = None
    """None: <dataset id, / replaced by ->__balanced_replay__<seed>__<unix time>"""
    runs_dir: str = "runs"
    """parent folder of the run directory (an existing run directory is an error, never overwritten)"""
    resume: str | None = None
    """continue the killed run in this directory to the result of an uninterrupted one; its args.json holds the flags"""
    track: bool = False
    """log every metrics row, evaluation and the summary to Weights & Biases (pip install -e ".[track]")"""
    wandb_project: str = "finetune-rl"
    """the W&B project of --track"""
    wandb_entity: str | None = None
    """the W&B entity (user or team) of --track (None: your default entity)"""


def validate(args: Args) -> None:
    check_flags(args, ("offline_steps", "online_steps", "expl_noise", "warmup_updates"),
                ("batch_size", "eval_every", "eval_episodes", "log_every", "policy_freq", "hidden", "collapse_window",
                 "ensemble_size", "online_capacity", "temperature", "warmup_online_steps", "ratio_batch_size",
                 "ratio_lr"))
    if not 0.0 < args.init_online_fraction < 1.0:
        raise SystemExit(f"error: --init-online-fraction must be in (0, 1), got {args.init_online_fraction}")
    if 0 < args.online_steps < args.warmup_online_steps:
        raise SystemExit(f"error: --online-steps {args.online_steps} is less than --warmup-online-steps "
                         f"{args.warmup_online_steps}: no update would ever run")
    if len(args.checkpoint) > args.ensemble_size:
        raise SystemExit(f"error: {len(args.checkpoint)} --checkpoint for an ensemble of --ensemble-size "
                         f"{args.ensemble_size}: one checkpoint per member at most")


# ---------------------------------------------------------------------------------------------- networks
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


class EnsembleActor(nn.Module):
    """N deterministic policies pi_i(s) = max_action * tanh(MLP_i(s)), each layer of all members one batched matmul.
    Called, it is the ensemble's policy: the mean of the members' actions."""

    def __init__(self, obs_dim: int, act_dim: int, max_action: torch.Tensor, hidden: int = 256, n: int = 1):
        super().__init__()
        self.n = n
        self.layers = nn.ModuleList([EnsembleLinear(n, obs_dim, hidden), EnsembleLinear(n, hidden, hidden),
                                     EnsembleLinear(n, hidden, act_dim)])
        self.register_buffer("max_action", max_action)

    def members(self, obs: torch.Tensor) -> torch.Tensor:
        """pi_i(s) of every member, shape (N, B, act_dim), for obs (B, obs_dim) or (N, B, obs_dim) (one batch each)."""
        x = obs.expand(self.n, -1, -1)
        for i, layer in enumerate(self.layers):
            x = layer(x, self.n)
            x = torch.relu(x) if i < len(self.layers) - 1 else x
        return self.max_action * torch.tanh(x)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """a(s) = mean_i pi_i(s), for obs of shape (..., obs_dim)."""
        return self.members(obs.reshape(-1, obs.shape[-1])).mean(0).reshape(*obs.shape[:-1], -1)


class SumTree:
    """Sum tree over `capacity` leaf priorities, in torch on the device (float64 sums). A wide tree: each node sums
    `fanout` children, so 1.25M leaves need 4 levels instead of 21 and a batched update or sample is a handful of
    tensor ops per level (no Python loop per sample, no host round-trip). levels[0] holds the leaves, levels[-1]
    the `fanout` top nodes; node j of level d sums nodes fanout*j ... fanout*j + fanout-1 of level d-1."""

    def __init__(self, capacity: int, device, fanout: int = 64):
        self.fanout, self.levels, n = fanout, [], capacity
        while True:
            n = -(-n // fanout) * fanout  # each level padded to whole groups of children (padding stays 0)
            self.levels.append(torch.zeros(n, dtype=torch.float64, device=device))
            if n == fanout:
                break
            n //= fanout

    def total(self) -> torch.Tensor:
        return self.levels[-1].sum()

    def update(self, idx: torch.Tensor, priorities: torch.Tensor) -> None:
        """Set leaf priorities, then recompute their ancestors level by level (duplicates write equal values)."""
        self.levels[0][idx] = priorities.to(torch.float64)
        for below, level in zip(self.levels, self.levels[1:]):
            idx = idx // self.fanout
            level[idx] = below.view(-1, self.fanout)[idx].sum(1)

    def sample(self, batch_size: int) -> torch.Tensor:
        """Stratified proportional sampling: split the total mass into batch_size equal segments, draw one point u
        uniformly in each, and descend to the leaf whose cumulative-priority interval holds it."""
        dev = self.levels[0].device
        u = (torch.arange(batch_size, device=dev) + torch.rand(batch_size, dtype=torch.float64, device=dev))
        u = u * (self.total() / batch_size)
        node = torch.zeros(batch_size, dtype=torch.long, device=dev)
        for level in reversed(self.levels):
            cum = level.view(-1, self.fanout)[node].cumsum(1)  # (B, fanout) cumulative mass of node's children
            # rounding can put u at or past the node's total: keep it below, so an empty child is never entered
            u = torch.minimum(u, torch.nextafter(cum[:, -1], torch.zeros_like(u)))
            child = torch.searchsorted(cum, u[:, None], right=True)  # the first child whose cumulative mass > u
            u = u - torch.where(child > 0, cum.gather(1, (child - 1).clamp(min=0)), 0.0).squeeze(1)
            node = node * self.fanout + child.squeeze(1)
        return node


class DensityRatio(nn.Module):
    """w(s, a) >= 0, an estimate of d_online(s, a) / d_offline(s, a), initialised as in the authors' code (rlkit):
    hidden weights uniform +-1/sqrt(weight.size(0)) -- rlkit's fanin_init takes the bound from the OUTPUT width of
    an nn.Linear weight (out, in) -- and zero biases; last weights uniform +-3e-3 and last bias 1.0, so w starts
    close to 1 everywhere."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 256):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(obs_dim + act_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, 1))
        for layer in (self.net[0], self.net[2]):
            bound = 1.0 / math.sqrt(layer.weight.shape[0])
            nn.init.uniform_(layer.weight, -bound, bound)
            nn.init.zeros_(layer.bias)
        nn.init.uniform_(self.net[4].weight, -3e-3, 3e-3)
        nn.init.constant_(self.net[4].bias, 1.0)

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.net(torch.cat([obs, act], -1))).squeeze(-1)


def density_ratio_loss(w_off: torch.Tensor, w_on: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Jensen-Shannon f-divergence loss: mean_off[-log(2/(w+1) + eps)] - mean_on[log(2w/(w+1) + eps)]."""
    return -torch.log(2.0 / (w_off + 1.0) + eps).mean() - torch.log(2.0 * w_on / (w_on + 1.0) + eps).mean()


def initial_max_priority(n_offline: int, fraction: float, n_first: int) -> float:
    """The priority at which the first n_first online transitions enter so that they hold `fraction` of the
    total mass next to n_offline offline transitions at priority 1: max_0 = M f / ((1 - f) n_first)."""
    return n_offline * fraction / ((1.0 - fraction) * n_first)


def agent_part(ckpt: dict) -> dict:
    """One agent's checkpoint (td3_bc.py, naive_ft.py, conservative_ft.py) as a 1-member part of an ensemble: its
    actor's nn.Linear weights (out, in) and biases (out,) become EnsembleActor's (1, in, out) and (1, 1, out), and
    so do their Adam moments; its twin critic already is the ensemble layout (member 0's twins at rows 0 and 1)."""
    member = lambda t: t.T[None] if t.dim() == 2 else t[None, None]  # noqa: E731
    actor = lambda sd: {**{f"layers.{int(k.split('.')[1]) // 2}.{k.split('.')[2]}": member(v)  # noqa: E731
                           for k, v in sd.items() if k.startswith("net.")}, "max_action": sd["max_action"]}
    opt = ckpt["actor_opt"]
    return {"n": 1, "actor": actor(ckpt["actor"]), "actor_target": actor(ckpt["actor_target"]),
            "critic": ckpt["critic"], "critic_target": ckpt["critic_target"], "critic_opt": ckpt["critic_opt"],
            "actor_opt": {"param_groups": opt["param_groups"], "state": {
                j: {k: v if k == "step" else member(v) for k, v in st.items()} for j, st in opt["state"].items()}}}


def stack_members(parts: list[dict]) -> dict:
    """One ensemble of the members of `parts` ({"n": members, and state dicts of this script's networks and Adams}),
    in order: actor tensors stack along dim 0; critic tensors (member i's twins at rows i and n + i) take the parts'
    first twins, then their second twins. Adam moments stack like their parameters, the step count (only in the
    bias correction, about 1 after 10^4 steps) is the largest; a part without Adam states gives None: fresh Adams."""
    def cat(tensors: list, twins: bool) -> torch.Tensor:
        tensors = [t.cpu() for t in tensors]
        return torch.cat([t[:p["n"]] for t, p in zip(tensors, parts)] + [t[p["n"]:] for t, p in zip(tensors, parts)]
                         if twins else tensors)
    out = {"n": sum(p["n"] for p in parts)}
    for net in ("actor", "critic", "actor_target", "critic_target"):
        out[net] = {k: v if k == "max_action" else cat([p[net][k] for p in parts], net.startswith("critic"))
                    for k, v in parts[0][net].items()}
    for opt in ("actor_opt", "critic_opt"):
        states = [p[opt]["state"] for p in parts]
        out[opt] = None if not all(states) else {"param_groups": parts[0][opt]["param_groups"], "state": {
            j: {"step": torch.stack([s[j]["step"].cpu() for s in states]).max(),
                **{k: cat([s[j][k] for s in states], opt == "critic_opt") for k in ("exp_avg", "exp_avg_sq")}}
            for j in states[0]}}
    return out


def networks(n: int, obs_dim: int, act_dim: int, max_action, args, device, saved: dict | None = None) -> tuple:
    """An ensemble of n agents: actors, 2n critics (agent i's twins are critics i and n + i), target copies, one
    fused Adam each for all actors and for all critics (same math as n separate Adams); loaded from `saved`."""
    actor = EnsembleActor(obs_dim, act_dim, max_action, args.hidden, n).to(device)
    critic = Critic(obs_dim, act_dim, args.hidden, 2 * n).to(device)
    nets = (actor, critic, copy.deepcopy(actor).requires_grad_(False), copy.deepcopy(critic).requires_grad_(False),
            torch.optim.Adam(actor.parameters(), lr=args.lr, fused=True),
            torch.optim.Adam(critic.parameters(), lr=args.lr, fused=True))
    for name, obj in zip(("actor", "critic", "actor_target", "critic_target", "actor_opt", "critic_opt"), nets):
        if saved and saved[name] is not None:
            obj.load_state_dict(saved[name])
        elif saved:  # stack_members: a member never trained
            print(f"note: a member has no {name} state (it never trained): the ensemble's {name} starts fresh")
    return nets


# ---------------------------------------------------------------------------------------------- helpers
def ensemble_diagnostics(replay, n_off: int, n_on: int, obs_dim: int, actor, critic, pretrained_actor, gen) -> dict:
    """naive_ft.py's collapse diagnostics for the ensemble (q_pi_*: mean_i min(Q_i1, Q_i2)(s, a(s)), the actor's
    objective), and q_std: the members' disagreement, the std over members of min(Q_i1, Q_i2)(s, a(s))."""
    with torch.no_grad():
        s = replay[torch.cat([torch.randint(n_off, (1024,), device=replay.device, generator=gen),  # offline, online
                              n_off + torch.randint(n_on, (1024,), device=replay.device, generator=gen)]), :obs_dim]
        pi = actor(s)  # the ensemble's action
        q_pi = critic(s, pi).view(2, actor.n, -1).min(0).values  # min(Q_i1, Q_i2)(s, a(s)), (N, 2048)
        return {"pi_dist": float((pi - pretrained_actor(s)).norm(dim=-1).mean()),
                "q_pi_offline": float(q_pi[:, :1024].mean()), "q_pi_online": float(q_pi[:, 1024:].mean()),
                "q_std": float(q_pi.std(0, correction=0).mean())}


# ---------------------------------------------------------------------------------------------- one update
def update(step: int, batch, actor, actor_target, critic, critic_target, actor_opt, critic_opt, args,
           offline: bool) -> dict:
    """One gradient step of the ensemble on batch = (s, a, r, s', terminated). Offline (TD3+BC pretraining) every
    member trains on its own batch (leading dim N) exactly as td3_bc.py; online (TD3) one batch (B, .) serves all,
    and actions are the ensemble's mean action. Member i's twins are critics i and N + i. Returns detached scalar
    tensors (no host sync); losses are per member (their sums over members, which the gradients follow, over N)."""
    obs, act, rew, next_obs, terminated = batch
    rew, terminated = rew.squeeze(-1), terminated.squeeze(-1)  # (N, B) offline, (B,) online
    n = actor.n
    twins = (lambda x: x.repeat(2, 1, 1)) if offline else (lambda x: x)  # member i's batch for critics i and N+i
    with torch.no_grad():
        # target-policy smoothing: a' = clip(pi'(s') + clip(eps, -c, c), -max, max), eps ~ N(0, sigma^2), with
        # pi' member i's target actor (offline) or the ensemble's, mean_i pi'_i (online)
        max_action = actor.max_action
        next_pi = actor_target.members(next_obs) if offline else actor_target(next_obs)
        noise = (torch.randn_like(next_pi) * args.policy_noise).clamp(-args.noise_clip, args.noise_clip) * max_action
        next_act = torch.max(torch.min(next_pi + noise, max_action), -max_action)
        # each member's clipped double-Q target: y_i = r + gamma * (1 - terminated) * min(Q'_i1, Q'_i2)(s', a')
        q_next = critic_target(twins(next_obs), twins(next_act)).view(2, n, -1).min(0).values
        target_q = rew + args.gamma * (1.0 - terminated) * q_next  # (N, B)
    q = critic(twins(obs), twins(act)).view(2, n, -1)  # (twin, member, B)
    critic_loss = ((q - target_q) ** 2).mean(-1).sum()  # sum_i MSE(Q_i1, y_i) + MSE(Q_i2, y_i)
    critic_opt.zero_grad(set_to_none=True)
    critic_loss.backward()
    critic_opt.step()
    info = {"critic_loss": critic_loss.detach() / n, "q_mean": q.detach().mean()}

    if step % args.policy_freq == 0:  # delayed policy update
        if offline:  # TD3+BC pretraining of each member (Fujimoto & Gu 2021, Eq. 3)
            pi = actor.members(obs)  # pi_i(s_i), (N, B, act_dim)
            q_pi = critic(obs, pi, n=n)  # Q_i1(s_i, pi_i(s_i)), (N, B)
            lmbda = args.alpha / q_pi.abs().mean(1, keepdim=True).detach()  # lambda_i = alpha / mean|Q_i1(s, pi_i(s))|
            reg_loss = ((pi - act) ** 2).mean((1, 2)).sum()  # behaviour cloning towards each member's dataset actions
            actor_loss = -(lmbda * q_pi).mean(1).sum() + reg_loss
        else:  # the ensemble's action maximizes mean_i min(Q_i1, Q_i2): pessimism, nothing holds it near the data
            q_pi = critic(obs, actor(obs)).view(2, n, -1).min(0).values
            lmbda, reg_loss = torch.ones((), device=obs.device), torch.zeros((), device=obs.device)
            actor_loss = -q_pi.mean(1).sum()  # = -N mean_i min(Q_i1, Q_i2): a sum over members, as offline
        actor_opt.zero_grad(set_to_none=True)
        actor_loss.backward(inputs=list(actor.parameters()))  # gradients for the actors only
        actor_opt.step()
        with torch.no_grad():  # Polyak averaging, theta' <- theta' + tau * (theta - theta')
            torch._foreach_lerp_(list(actor_target.parameters()), list(actor.parameters()), args.tau)
            torch._foreach_lerp_(list(critic_target.parameters()), list(critic.parameters()), args.tau)
        info.update(actor_loss=actor_loss.detach() / n, reg_loss=reg_loss.detach() / n, lmbda=lmbda.mean())
    return info


def update_ratio_and_priorities(weight_net, weight_opt, tree, idx, rl_batch, off_batch, on_batch, args):
    """One balanced-replay step: new priorities for the sampled RL batch from the current estimator (before its
    update), then one estimator update. Returns (new priorities, detached scalar stats)."""
    b = off_batch[0].shape[0]  # one forward over the offline and online batch: w_off, w_on = its two halves
    w_off, w_on = weight_net(torch.cat([off_batch[0], on_batch[0]]), torch.cat([off_batch[1], on_batch[1]])).split(b)
    with torch.no_grad():  # priority = w^(1/T) / mean_offline(w^(1/T)), clamped to [1e-3, 1e3]
        inv_t = 1.0 / args.temperature
        priority = (weight_net(rl_batch[0], rl_batch[1]) ** inv_t / ((w_off ** inv_t).mean() + 1e-10)).clamp(1e-3, 1e3)
    tree.update(idx, priority)
    loss = density_ratio_loss(w_off, w_on)
    weight_opt.zero_grad(set_to_none=True)
    loss.backward()
    weight_opt.step()
    return priority, {"ratio_loss": loss.detach(), "w_offline": w_off.detach().mean(), "w_online": w_on.detach().mean()}


# ---------------------------------------------------------------------------------------------- training
def train(args: Args) -> None:
    script = Path(__file__).stem
    # state: the last checkpoint of a run continued with --resume (its fields checked, the estimator's too)
    args, saved, state = start(args, script, {"members": list, "weight_net": dict, "weight_opt": dict, "run": {
        "tree": list, "max_priority": torch.Tensor, "updates_done": int}})
    validate(args)
    requested = resolve_dataset_id(args.env, args.dataset_id) if args.env or args.dataset_id else None
    agents = [] if state else [load_checkpoint(p, requested) for p in args.checkpoint]  # members 0, 1, ... from files
    ckpt = state or (agents[0] if agents else None)
    for path, agent in zip(args.checkpoint[1:], agents[1:]):
        if (agent["dataset_id"], agent["args"]["hidden"]) != (ckpt["dataset_id"], ckpt["args"]["hidden"]):
            raise SystemExit(f"error: --checkpoint {path} ({agent['dataset_id']}, --hidden {agent['args']['hidden']}) "
                             f"does not fit --checkpoint {args.checkpoint[0]} ({ckpt['dataset_id']}, --hidden "
                             f"{ckpt['args']['hidden']}): an ensemble's members share one dataset and one width")
    n_pre = args.ensemble_size - len(args.checkpoint)  # members pretrained here, after the loaded ones
    args, device, run_dir = prepare(
        args, script, ckpt["dataset_id"] if ckpt else requested or resolve_dataset_id("hopper", None),
        offline_steps=0 if not n_pre else 1_000_000 if args.offline_steps is None else args.offline_steps,
        hidden=ckpt["args"]["hidden"] if ckpt else args.hidden)
    if n_pre and not args.offline_steps:
        raise SystemExit(f"error: {n_pre} of the {args.ensemble_size} ensemble members have no --checkpoint, and "
                         f"--offline-steps 0 would finetune them untrained")

    # data on the device: one replay table, the offline rows first, then a ring of `capacity` online rows
    n_on, capacity = 0, min(args.online_steps, args.online_capacity)
    data, replay, split, about = load_replay(args.dataset_id, ckpt, args.checkpoint[0] if agents else run_dir,
                                             capacity, device)
    n_off, (obs_dim, act_dim), (obs_mean, obs_std) = len(data.obs), split[:2], (about["obs_mean"], about["obs_std"])
    to_dev = lambda x: torch.as_tensor(x, dtype=torch.float32, device=device)  # noqa: E731
    eval_envs, env = [make_eval_env(data.dataset) for _ in range(args.eval_episodes)], make_env(data.dataset)
    tree = SumTree(n_off + capacity, device)  # priorities of every replay row; offline rows start at 1
    rows = torch.arange(n_off + capacity, device=device)  # row indices on the device: no upload per online step
    tree.update(rows[:n_off], torch.ones(n_off, device=device))
    max_priority = torch.tensor(initial_max_priority(n_off, args.init_online_fraction, args.warmup_online_steps),
                                dtype=torch.float64, device=device)
    updates_done = 0  # online updates so far (the warm-up burst included)

    # networks and optimizers: members 0..k-1 come from --checkpoint, k..N-1 are pretrained here (an ensemble of
    # their own in the offline phase); at the handoff all N become one ensemble
    max_action = to_dev(data.dataset.action_space.high)
    NETS = ("actor", "critic", "actor_target", "critic_target", "actor_opt", "critic_opt")
    ensemble = lambda n, saved=None: networks(n, obs_dim, act_dim, max_action, args, device, saved)  # noqa: E731
    members = state["members"] if state else [agent_part(agent) for agent in agents]
    nets = (ensemble(args.ensemble_size if state["phase"] == "online" else n_pre, state) if state else
            ensemble(n_pre) if n_pre else ensemble(args.ensemble_size, stack_members(members)))
    actor, critic, actor_target, critic_target, actor_opt, critic_opt = nets
    pretrained_actor = None  # pi_0: a frozen copy of the ensemble's actors when the online phase starts
    if state and state["pretrained_actor"] is not None:
        pretrained_actor = copy.deepcopy(actor).requires_grad_(False)
        pretrained_actor.load_state_dict(state["pretrained_actor"])
    weight_net = DensityRatio(obs_dim, act_dim, args.hidden).to(device)
    weight_opt = torch.optim.Adam(weight_net.parameters(), lr=args.ratio_lr, fused=True)
    if state:  # the estimator, the sum tree, its running maximum and the update count where the checkpoint left them
        weight_net.load_state_dict(state["weight_net"])
        weight_opt.load_state_dict(state["weight_opt"])
        tree.levels = [x.to(device) for x in state["run"]["tree"]]
        max_priority, updates_done = state["run"]["max_priority"].to(device), state["run"]["updates_done"]

    columns = ["phase", "step", "critic_loss", "actor_loss", "reg_loss", "q_mean", "lmbda", "pi_dist",
               "q_pi_offline", "q_pi_online", "q_std", "w_offline", "w_online", "online_share", "ratio_loss", "updates",
               "train_return", "eval_return", "eval_return_std", "eval_score", "updates_per_s", "elapsed_s"]

    def checkpoint(phase: str, step: int) -> dict:  # all the rest of the run depends on (Run.write adds the files)
        return {"args": dataclasses.asdict(args), **about, "actor": actor.state_dict(), "critic": critic.state_dict(),
                "actor_target": actor_target.state_dict(), "critic_target": critic_target.state_dict(),
                "actor_opt": actor_opt.state_dict(), "critic_opt": critic_opt.state_dict(),
                "pretrained_actor": pretrained_actor.state_dict() if pretrained_actor else None, "rng": rng_state(gen),
                "weight_net": weight_net.state_dict(), "weight_opt": weight_opt.state_dict(),
                "ensemble_size": args.ensemble_size, "members": members,
                "run": {"n_on": n_on, "online_rows": replay[n_off:n_off + min(n_on, capacity)].to("cpu", copy=True),
                        "obs": obs_t, "ep_return": ep_return, "episode": episode, "recent_returns": recent_returns,
                        "reset_state": reset_state, "tree": tree.levels, "max_priority": max_priority,
                        "updates_done": updates_done}}

    gen = torch.Generator(device=device).manual_seed(args.seed)  # the diagnostics' own RNG
    # the online loop's state: online rows, normalized s, the episode's return and actions, returns since the last
    # metrics row, the env's RNG state before the current episode's reset (None: the first, seeded reset)
    n_on, obs_t, ep_return, episode, recent_returns, reset_state = restore(
        state, env, replay, n_off, gen, lambda o: to_dev((o - obs_mean) / obs_std), run_dir)
    run = Run(run_dir, columns, args, script, saved, state, device, data,
              checkpoint_sha256=weights_sha256(ckpt) if ckpt and not state else None,  # member 0's agent (new runs)
              members_sha256=[weights_sha256(agent) for agent in agents])  # every member from --checkpoint
    print(f"ensemble of {args.ensemble_size}: {len(args.checkpoint)} from --checkpoint, {n_pre} pretrained here" +
          (f" ({args.offline_steps} steps each)" if n_pre else " (no offline phase)"), flush=True)
    off_done = state["step"] if state and state["phase"] == "offline" else args.offline_steps if state else 0
    on_done = state["step"] if state and state["phase"] == "online" else None  # None: the online phase has not begun

    # ------------------------------------------------------------------ offline phase: the members without --checkpoint
    for step in range(off_done + 1, args.offline_steps + 1):  # TD3+BC side by side, each member on its own batches
        idx = torch.randint(n_off, (actor.n, args.batch_size), device=device)
        run.add(update(step, replay[idx].split(split, dim=-1), actor, actor_target, critic, critic_target, actor_opt,
                       critic_opt, args, offline=True))
        evaluated = step % args.eval_every == 0 or step == args.offline_steps  # evaluate, then checkpoint
        if evaluated or step % args.log_every == 0:
            row = run.row("offline", step)  # the window's mean losses: the host reads the device sums here only
            returns = evaluate(actor, eval_envs, obs_mean, obs_std, args.seed, device) if evaluated else None
            run.write(row, args.offline_steps, returns, checkpoint("offline", step) if evaluated else None)
    if args.offline_steps == args.online_steps == 0 and not state:  # nothing to train: evaluate the agents as they are
        run.write(run.row("offline", 0), 0, evaluate(actor, eval_envs, obs_mean, obs_std, args.seed, device),
                  checkpoint("offline", 0))

    # ------------------------------------------------------------------ online phase: act, store, update
    if args.online_steps > 0:
        if on_done is None:  # the handoff: one ensemble, pi_0, the first reset, the step-0 evaluation
            if actor.n < args.ensemble_size:  # the members from --checkpoint, then those pretrained here
                trained = {"n": actor.n, **{name: obj.state_dict() for name, obj in zip(NETS, nets)}}
                nets = ensemble(args.ensemble_size, stack_members(members + [trained]))
                actor, critic, actor_target, critic_target, actor_opt, critic_opt = nets
            pretrained_actor = copy.deepcopy(actor).requires_grad_(False)
            if args.reset_optimizers:  # fresh Adam moments for the online phase
                actor_opt, critic_opt = (torch.optim.Adam(m.parameters(), args.lr, fused=True) for m in (actor, critic))
            obs_t = to_dev((env.reset(seed=args.seed)[0] - obs_mean) / obs_std)  # normalized s, uploaded once a step
            run.write(run.row("online", 0), args.online_steps,  # step 0: the pretrained policy, before any update
                      evaluate(actor, eval_envs, obs_mean, obs_std, args.seed, device), checkpoint("online", 0))
        for step in range((on_done or 0) + 1, args.online_steps + 1):
            with torch.no_grad():  # a = clip(a(s) + N(0, (sigma * max_action)^2)), a(s) = mean_i pi_i(s)
                a = actor(obs_t)
                a = (a + torch.randn_like(a) * args.expl_noise * max_action).clamp(-max_action, max_action)
            action = a.cpu().numpy()
            run.check_finite("online", step, action)  # non-finite weights: stop before the env sees the action
            next_obs, reward, terminated, truncated, _ = env.step(action)
            # a truncated step is stored as non-terminal; it enters the tree at the running maximum priority
            # [r | normalized s' | terminated] in one upload; s' is then reused as the next step's s
            r_s2_term = to_dev(np.concatenate([[reward], (next_obs - obs_mean) / obs_std, [terminated]]))
            i = n_off + n_on % capacity  # the ring's next row
            replay[i] = torch.cat([obs_t, a, r_s2_term])
            tree.update(rows[i:i + 1], max_priority[None])
            n_on, obs_t, ep_return = n_on + 1, r_s2_term[1:-1], ep_return + float(reward)
            episode.append(action)
            if terminated or truncated:
                run.episode(step, ep_return, len(episode))
                recent_returns.append(ep_return)
                reset_state = env.unwrapped.np_random.bit_generator.state  # how the next episode starts (--resume)
                obs_t, ep_return, episode = to_dev((env.reset()[0] - obs_mean) / obs_std), 0.0, []
            # no update before the warm-up transitions are in; then the warm-up burst; then one per step
            for _ in range(0 if step < args.warmup_online_steps else
                           args.warmup_updates if step == args.warmup_online_steps else 1):
                updates_done += 1
                idx = tree.sample(args.batch_size)  # proportional to priority, stratified
                batch = replay[idx].split(split, dim=1)
                info = update(updates_done, batch, actor, actor_target, critic, critic_target, actor_opt, critic_opt,
                              args, offline=False)
                off, on = (replay[torch.randint(lo, hi, (args.ratio_batch_size,), device=device)].split(split, dim=1)
                           for lo, hi in ((0, n_off), (n_off, n_off + min(n_on, capacity))))  # the estimator's batches
                priority, stats = update_ratio_and_priorities(weight_net, weight_opt, tree, idx, batch, off, on, args)
                max_priority = torch.maximum(max_priority, priority.max().to(torch.float64))
                run.add({**info, **stats, "online_share": (idx >= n_off).float().mean()})
            evaluated = step % args.eval_every == 0 or step == args.online_steps  # evaluate, then checkpoint
            if evaluated or step % args.log_every == 0:  # a metrics row, with the collapse diagnostics
                row = run.row("online", step, {
                    **ensemble_diagnostics(replay, n_off, min(n_on, capacity), obs_dim, actor, critic, pretrained_actor,
                                           gen), "updates": updates_done,
                    "train_return": float(np.mean(recent_returns)) if recent_returns else None})
                recent_returns = []
                returns = evaluate(actor, eval_envs, obs_mean, obs_std, args.seed, device) if evaluated else None
                run.write(row, args.online_steps, returns, checkpoint("online", step) if evaluated else None)
    run.close(args.collapse_window if args.online_steps > 0 else None)


# --- run files: identical in every script (tests/test_shared_code.py) ---------------------------------------------
CHECKPOINT_FORMAT = 4  # --resume continues this format only; --checkpoint reads the weights of any format

class Run:
    """The run directory: args.json, metrics.csv (a row every --log-every steps: each value's mean since the last
    row, read from its device sum only then), episodes.csv, checkpoint.pt (at each evaluation), summary.json."""

    def __init__(self, run_dir: Path, columns: list[str], args, script: str, saved, state, device, data, **agents):
        run_dir.mkdir(parents=True, exist_ok=bool(args.resume))
        self.lock = os.open(run_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)  # one process per run dir, until it ends
        try:
            os.lockf(self.lock, os.F_TLOCK, 0)
        except OSError:
            raise SystemExit(f"error: {run_dir} is in use by process {(run_dir / '.lock').read_text()}") from None
        os.ftruncate(self.lock, 0), os.write(self.lock, str(os.getpid()).encode())
        run = state["run"] if state else {"files": {}, "evals": [], "elapsed_s": 0.0}
        for name, (size, sha256) in run["files"].items():  # nothing is written before the CSVs match the checkpoint
            head = (run_dir / name).read_bytes()[:size] if (run_dir / name).exists() else b""
            if hashlib.sha256(head).hexdigest() != sha256:
                raise SystemExit(f"error: --resume {run_dir}: {name} is not what its checkpoint recorded (" +
                                 (f"{len(head)} bytes, not {size})" if len(head) < size else "its bytes changed)"))
        if saved and not state and any(saved.get(k) != v for k, v in agents.items()):  # killed before a checkpoint
            raise SystemExit(f"error: --resume {run_dir}: --checkpoint {args.checkpoint} holds other weights than "
                             f"those args.json recorded (sha256); restore that file or start a new run")
        if saved:  # the run's args stay as they were; each resume adds when, where from, with which code
            saved["resumes"].append({"from": f"{state['phase']} step {state['step']}" if state else "the start",
                                     "meta": run_metadata(device)})
        info = saved or {"algorithm": script, "args": dataclasses.asdict(args), "meta": run_metadata(device),
                         "resumes": [], **agents, **({"wandb_id": f"{time.time_ns():x}"} if args.track else {})}
        atomic_save(run_dir / "args.json", json.dumps(info, indent=2))
        self.dir, self.script, self.dataset, self.evals, self.args = run_dir, script, data.dataset, run["evals"], args
        rows = "".join(p.read_text() for p in run_dir.glob("metrics.csv") if saved).split("\n")[1:-1]  # whole rows
        last = (rows or [",-1"])[-1].split(",")  # the last row written, the last one W&B has (--resume: not again)
        self.logged = (int(last[1]) + args.offline_steps * (last[0] == "online"), last[0] == "online")
        self.wandb = self.track(lambda: __import__("wandb").init(  # pip install -e ".[track]"; one run across resumes
            project=args.wandb_project, entity=args.wandb_entity, id=info["wandb_id"], name=run_dir.name, dir=run_dir,
            resume="allow", config={**info["args"], "meta": info["meta"]})) if args.track else None
        self.files = []  # new, or cut back to the sizes the checkpoint recorded (rows after it are dropped)
        for name, header in (("metrics.csv", columns), ("episodes.csv", ["step", "return", "length", "score"])):
            size = run["files"].get(name, [None])[0]
            self.files.append(open(run_dir / name, "w" if size is None else "a", newline=""))
            self.files[-1].truncate(size) if size is not None else csv.writer(self.files[-1]).writerow(header)
        self.metrics, self.episodes = csv.DictWriter(self.files[0], columns), csv.writer(self.files[1])
        self.sums, self.counts, self.row_from = {}, {}, state["step"] + 1 if state else 1
        self.last_checkpoint = f"{state['phase']} step {state['step']}" if state else None
        self.start, self.t_last = time.perf_counter() - run["elapsed_s"], time.perf_counter()
        print(f"{script} on {args.dataset_id}: {len(data.obs)} offline transitions, device {device}, "
              f"{torch.get_num_threads()} threads, run dir {run_dir}" + ("" if has_reference_scores(data.dataset) else
              f"\nnote: {args.dataset_id} has no reference scores: every score here is a raw return"), flush=True)

    def add(self, info: dict) -> None:
        for k, v in info.items():  # device tensors: no host sync
            self.sums[k], self.counts[k] = self.sums.get(k, 0.0) + v, self.counts.get(k, 0) + 1

    def row(self, phase: str, step: int, extra: dict | None = None) -> dict:
        """The metrics row of the steps since the last one; a row that is not finite is written, then stops the run."""
        row = {k: float(self.sums[k]) / self.counts[k] for k in self.sums}  # the host reads the sums here only
        row.update(phase=phase, step=step, **(extra or {}))
        if self.counts:
            row["updates_per_s"] = self.counts["critic_loss"] / (time.perf_counter() - self.t_last)
        if not all(math.isfinite(row[k]) for k in self.sums):
            self.metrics.writerow(row)
            self.files[0].flush()
            self.check_finite(phase, step)
        self.sums, self.counts, self.row_from = {}, {}, step + 1
        return row

    def check_finite(self, phase: str, step: int, action: np.ndarray | None = None) -> None:
        """Stop with one line if a loss of the current row, or the action about to be taken, is not finite."""
        if action is not None and np.isfinite(action).all():
            return
        bad = [k for k in self.sums if not math.isfinite(float(self.sums[k]))] + ([] if action is None else ["action"])
        if bad:
            raise SystemExit(f"error: non-finite {', '.join(bad)} in {phase} steps {self.row_from}-{step}: stopped; "
                             + (f"the last checkpoint ({self.last_checkpoint}) is untouched, continue it with "
                                f"--resume {self.dir}" if self.last_checkpoint else "no checkpoint was written yet"))

    def write(self, row: dict, last: int, returns: np.ndarray | None = None, checkpoint: dict | None = None) -> None:
        """Write a metrics row, with an evaluation's returns, then the checkpoint of the weights evaluated."""
        phase, step, now = row["phase"], row["step"], time.perf_counter()
        if returns is not None:
            row.update(eval_return=returns.mean(), eval_return_std=returns.std(),
                       eval_score=float(normalized_score(self.dataset, returns).mean()))
            self.evals += [(step, row["eval_score"])] if phase == "online" else []
        self.metrics.writerow({**row, "elapsed_s": now - self.start})
        try:  # every row reaches the file; before a checkpoint records the CSVs (size, sha256), the disk
            for f in self.files:
                f.flush(), os.fsync(f.fileno()) if checkpoint is not None else None
        except OSError as e:
            raise SystemExit(f"error: cannot write {f.name}: {e.strerror}; the last checkpoint is intact") from None
        if checkpoint is not None:
            csvs = {Path(f.name).name: Path(f.name).read_bytes() for f in self.files}
            checkpoint["run"].update(files={k: [len(b), hashlib.sha256(b).hexdigest()] for k, b in csvs.items()},
                                     evals=self.evals, elapsed_s=time.perf_counter() - self.start)
            atomic_save(self.dir / "checkpoint.pt", {"format": CHECKPOINT_FORMAT, "algorithm": self.script,
                                                     "phase": phase, "step": step, **checkpoint})
            self.last_checkpoint = f"{phase} step {step}"
        at = (step + (self.args.offline_steps if phase == "online" else 0), phase == "online")  # W&B's step: growing
        logged = {f"{phase}/{k}": v for k, v in row.items() if k != "phase" and v is not None}  # --track
        self.track(lambda: self.wandb.log(logged, step=at[0])) if self.wandb and at > self.logged else None  # not twice
        left = last - step + (self.args.online_steps if phase == "offline" else 0)  # ETA: steps left / recent rate
        shown = [f"{k} {row[k]:.1f}" for k in ("eval_score", "updates_per_s") if k in row] + \
            ([f"ETA {left / row['updates_per_s'] / 60:.1f} min"] if left and row.get("updates_per_s") else [])
        print(" | ".join([f"{phase:>7} step {step:>8}/{last}", *shown]), flush=True)
        self.t_last = time.perf_counter()

    def episode(self, step: int, ret: float, length: int) -> None:
        self.episodes.writerow([step, ret, length, float(normalized_score(self.dataset, ret))])

    def close(self, collapse_window: int | None) -> None:
        """summary.json (after an online phase: the collapse statistics of its evaluations); close the files."""
        if collapse_window:
            summary = {**collapse_summary(self.evals, collapse_window),
                       "score": "normalized" if has_reference_scores(self.dataset) else "raw return"}
            atomic_save(self.dir / "summary.json", json.dumps(summary, indent=2))
            print("summary: " + " | ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}"
                                           for k, v in summary.items()))
        for f in self.files:
            f.close()
        self.track(lambda: (self.wandb.summary.update(summary if collapse_window else {}), self.wandb.finish())) \
            if self.wandb else None  # W&B's summary: summary.json
        print(f"done in {(time.perf_counter() - self.start) / 60:.1f} min; checkpoint {self.dir / 'checkpoint.pt'}")

    def track(self, call):  # --track: a W&B call that fails is one warning line and ends tracking, never the run
        try:
            return call()
        except Exception as e:
            self.wandb = print(f"warning: --track: {type(e).__name__}: {(str(e).splitlines() or [''])[0]}; the run "
                               f"goes on without W&B (the CSVs stay the record)", flush=True)

def check_flags(args, at_least_0: tuple[str, ...], above_0: tuple[str, ...]) -> None:
    """One line and exit 1 for a flag out of range (--threads, --seed and --device too)."""
    for names, ok, bound in ((at_least_0 + ("threads",), lambda v: v >= 0, ">= 0"), (above_0, lambda v: v > 0, "> 0"),
                             (("seed",), lambda v: 0 <= v < 2**32, "in [0, 2**32 - 1]")):  # seeds: NumPy's range
        for name in names:
            if getattr(args, name) is not None and not ok(getattr(args, name)):
                raise SystemExit(f"error: --{name.replace('_', '-')} must be {bound}, got {getattr(args, name)}")
    if args.device not in ("auto", "cpu", "cuda"):
        raise SystemExit(f"error: --device must be auto, cpu or cuda, got {args.device!r}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda, but torch sees no CUDA device")

def start(args, script: str, fields: dict | None = None):
    """With --resume: the run's Args (from its args.json; a flag given here must agree), args.json, last checkpoint
    (each field checked before use, the script's own `fields` too)."""
    if not args.resume:
        return args, None, None
    run_dir, where = Path(args.resume), f"error: --resume {args.resume}:"
    try:
        saved = json.loads((run_dir / "args.json").read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"{where} " + ("no run there (no args.json)" if isinstance(e, OSError) else
                                        "its args.json is not valid JSON (truncated?)")) from None
    check(f"{where} its args.json", saved, {"algorithm": str})
    if saved["algorithm"] != script:
        raise SystemExit(f"{where} that run was made by {saved['algorithm']}.py; resume it with that script")
    flags = {f.name: list if hasattr(f.type, "__origin__") else f.type for f in dataclasses.fields(args)}  # tuple: list
    check(f"{where} its args.json", saved, {"args": dict, "resumes": list, "meta": dict})
    check(f"{where} its args.json", saved, {"args": {k: v for k, v in flags.items() if k in saved["args"]}})
    if saved["args"].keys() - flags.keys():
        raise SystemExit(f"{where} its args.json has flags this script lacks: {sorted(saved['args'].keys() - flags)}")
    if flags.keys() - saved["args"].keys():  # flags added to the script since the run started: their defaults
        print(f"note: {where[7:]} its args.json predates {', '.join(sorted(flags.keys() - saved['args'].keys()))}: "
              f"their defaults")
    base = dataclasses.replace(type(args)(**{k: tuple(v) if isinstance(v, list) else v
                                             for k, v in saved["args"].items()}), resume=args.resume)
    merged = tyro.cli(type(args), default=base, description=__doc__.split("\n\n")[0])
    for f in dataclasses.fields(merged):
        if getattr(merged, f.name) != getattr(base, f.name):
            raise SystemExit(f"error: --{f.name.replace('_', '-')} {getattr(merged, f.name)} contradicts the resumed "
                             f"run's args.json ({getattr(base, f.name)}); --resume continues a run as it was started")
    ckpt = run_dir / "checkpoint.pt"  # none: killed before the first checkpoint, the run starts over
    state = load_checkpoint(str(ckpt), None, ensembles=True) if ckpt.exists() else None
    if state and (state.get("format"), state.get("algorithm")) != (CHECKPOINT_FORMAT, script):
        raise SystemExit(f"{where} its checkpoint is format {state.get('format', 1)} of {state.get('algorithm')}, "
                         f"this script resumes format {CHECKPOINT_FORMAT} of {script}")
    tensor, fields = torch.Tensor, fields or {}  # the fields every script reads back, then the script's own
    check(f"{where} its checkpoint", state, {"phase": str, "step": int, "pretrained_actor": dict | None, **fields,
          "rng": {"python": tuple, "numpy": tuple, "torch": tensor, "diagnostics": tensor}, "run": {
              "n_on": int, "online_rows": tensor, "obs": tensor | None, "ep_return": float, "episode": list,
              "recent_returns": list, "reset_state": dict | None, "files": dict, "evals": list, "elapsed_s": float,
              **fields.get("run", {})}}) if state else None
    return merged, saved, state

def prepare(args, script: str, dataset_id: str, **resolved):
    """Args with every default resolved (args.json records them), the device, the run directory; threads, seeds."""
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    run_name = args.run_name or f"{dataset_id.replace('/', '-')}__{script}__{args.seed}__{int(time.time())}"
    if run_name in (".", "..") or Path(run_name).name != run_name:
        raise SystemExit(f"error: --run-name must be one folder name (no / or ..), got {run_name!r}; see --runs-dir")
    run_dir = Path(args.resume or Path(args.runs_dir) / run_name)
    if run_dir.exists() and not args.resume:
        raise SystemExit(f"error: run directory {run_dir} already exists; choose another --run-name or --runs-dir, "
                         f"or continue it with --resume {run_dir}")
    torch.set_num_threads(args.threads) if args.threads else None
    random.seed(args.seed), np.random.seed(args.seed), torch.manual_seed(args.seed)
    args = dataclasses.replace(args, dataset_id=dataset_id, run_name=run_name, device=str(device), **resolved)
    return args, device, run_dir

def rng_state(gen: torch.Generator) -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(), "diagnostics":
            gen.get_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}

def restore(state: dict | None, env, replay, n_off: int, gen: torch.Generator, normalize, run_dir: Path) -> tuple:
    """The online loop's state at the checkpoint (None: a new run's): online rows, the env mid-episode, RNGs last."""
    if state is None:
        return 0, None, 0.0, [], [], None
    run, obs_t = state["run"], None if state["run"]["obs"] is None else state["run"]["obs"].to(replay.device)
    replay[n_off:n_off + len(run["online_rows"])] = run["online_rows"].to(replay.device)
    if state["phase"] == "online":  # reset the env as the episode was reset, then step through its actions
        obs = env.reset(seed=state["args"]["seed"])[0]
        if run["reset_state"] is not None:  # a later episode: reset from the env's RNG state before its reset
            env.unwrapped.np_random.bit_generator.state = run["reset_state"]
            obs = env.reset()[0]
        for a in run["episode"]:  # deterministic given the RNG: MuJoCo's warm start and the time limit come back too
            obs = env.step(a)[0]
        if not torch.equal(normalize(obs), obs_t):
            raise SystemExit(f"error: --resume {run_dir}: replaying the current episode did not reproduce the "
                             f"checkpointed observation (is the env deterministic?); cannot resume exactly")
    random.setstate(state["rng"]["python"])
    np.random.set_state(state["rng"]["numpy"])
    torch.set_rng_state(state["rng"]["torch"])
    if replay.device.type == "cuda":
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    gen.set_state(state["rng"]["diagnostics"])
    print(f"resuming from the checkpoint at {state['phase']} step {state['step']}", flush=True)
    return run["n_on"], obs_t, run["ep_return"], run["episode"], run["recent_returns"], run["reset_state"]

def atomic_save(path: Path, obj) -> None:
    """Write this process's temporary file, flush it to disk, rename it, sync the folders: a kill or a power loss
    leaves the old file or the new one. Serialized in memory first, so that a full disk is one OSError."""
    tmp, data = path.with_name(f"{path.name}.{os.getpid()}.tmp"), io.BytesIO()
    data.write(obj.encode()) if isinstance(obj, str) else torch.save(obj, data)
    try:
        with open(tmp, "wb") as f:
            f.write(data.getbuffer()), f.flush(), os.fsync(f.fileno())
        os.replace(tmp, path)
        for folder in (path.parent, path.parent.parent):  # the new name, and a new run directory's own
            fd = os.open(folder, os.O_RDONLY)
            os.fsync(fd), os.close(fd)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise SystemExit(f"error: cannot write {path}: {e.strerror}; the last {path.name} is intact") from None

def weights_sha256(ckpt: dict) -> str:
    """sha256 of the network tensors in a fixed order: equal hashes, bit-identical weights (as report.py --hash)."""
    h = hashlib.sha256()
    for net in ("actor", "critic", "actor_target", "critic_target"):
        for key in sorted(ckpt[net]):
            h.update(f"{net}/{key}".encode())
            h.update(ckpt[net][key].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()

def run_metadata(device: torch.device) -> dict:
    def git(*cmd):
        try:
            return subprocess.run(["git", "-C", os.path.dirname(os.path.abspath(__file__)), *cmd], capture_output=True,
                                  text=True, check=True).stdout.strip()
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
    """The CPU model and torch's kernels for it: bit-identical results need the same code paths (README)."""
    block = Path("/proc/cpuinfo").read_text().split("\n\n")[0] if Path("/proc/cpuinfo").exists() else ""  # Linux
    info = dict(map(str.strip, line.split(":", 1)) for line in block.splitlines() if ":" in line)
    isa = [f for f in ("avx2", "avx512f", "avx512_fp16", "amx_tile") if f in info.get("flags", "").split()]
    return (f"{info.get('vendor_id', '')} {info.get('model name') or platform.processor() or platform.machine()} "
            f"(family {info.get('cpu family', '?')} model {info.get('model', '?')} stepping "
            f"{info.get('stepping', '?')}; {' '.join(isa) or 'no avx2'}; torch kernels "
            f"{torch.backends.cpu.get_cpu_capability()})").strip()

if __name__ == "__main__":
    train(tyro.cli(Args, description=__doc__.split("\n\n")[0]))
