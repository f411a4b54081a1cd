"""Balanced replay and a pessimistic Q-ensemble: TD3 finetuning of an ensemble of pretrained agents whose replay is
prioritized by a learned density ratio d_online / d_offline (Lee, Seo, Lee, Abbeel & Shin, "Offline-to-Online Reinforcement Learning via Balanced Replay and Pessimistic
Q-Ensemble", CoRL 2021, arXiv 2107.00591). Details follow the authors' code (shlee94/Off2OnRL, rlkit-based):

- One prioritized buffer holds every offline transition plus the online ones (online capacity
  `--online-capacity`, 250k, a ring). Sampling is proportional to priority, stratified: the total mass is split
  into B equal segments and one point is drawn uniformly in each, then found in a sum tree (in torch, on the
  device, batched: no Python loop per sample, no host round-trip). As in the authors' code there is NO
  importance-sampling correction in the TD loss.
- A density-ratio network w(s, a) (256-256 ReLU MLP, output through ReLU, last bias initialised to 1.0) estimates
  d_online / d_offline. Every gradient step it trains (own Adam, lr 3e-4) on a fresh uniform batch of 256 online
  and 256 offline transitions with the Jensen-Shannon f-divergence loss
      L_w = mean_off[-log(2 / (w + 1) + eps)] - mean_on[log(2 w / (w + 1) + eps)],   eps = 1e-10.
- Each step the sampled RL batch's priorities become  w^(1/T) / mean_offline_batch(w^(1/T))  (T = --temperature,
  5), clamped to [1e-3, 1e3], computed with the estimator *before* its update of that step.
- New online transitions enter at the running maximum priority, offline ones at 1; the initial maximum is chosen so
  that the first 1000 online transitions hold a fraction f (--init-online-fraction, 0.5) of the total mass:
      max_0 = M f / ((1 - f) 1000)   for M offline transitions.
- Loop: the authors collect 1000 online steps per epoch, then run that epoch's updates (10x in the first epoch).
  We keep the per-step loop of naive_ft.py with one faithful exception: the first --warmup-online-steps (1000)
  transitions are collected with the pretrained policy before any update, then --warmup-updates (10,000) updates
  run, then one update per environment step. Total updates = warmup updates + online steps - warmup steps.
- Pessimistic Q-ensemble (the paper's other half): N agents (--ensemble-size, 5), pretrained independently with
  TD3+BC (each its own initial weights and batches; members 0, 1, ... may come from --checkpoint), finetuned as one.
  The authors' agents are SAC; our TD3 translation (our reading, every choice named):
    acting:  a(s) = mean_i pi_i(s)   (the authors average the members' Gaussian means; TD3 policies are the means)
    target:  y_i = r + gamma (1 - d) min(Q'_i1, Q'_i2)(s', a'),  a' = clip(mean_i pi'_i(s') + clip(eps))
             (each member its own clipped double-Q; one smoothed next action of the ensemble's target policy, as
             the authors' mixture gives one next action)
    critic:  sum_i [MSE(Q_i1, y_i) + MSE(Q_i2, y_i)]   on one shared prioritized batch
    actor:   maximize mean_i min(Q_i1, Q_i2)(s, a(s))   through the mean action: the members' actors train jointly
             (TD3's actor uses Q1 alone; the min of the twins is the authors' pessimism, kept for N = 1 too)
  Every member keeps its own twin critics, targets and Adam moments; all of them are batched (one matmul per
  layer for all members). N = 1 is balanced replay alone with the same objective.
- RL algorithm: TD3 from the pretrained TD3+BC agents (the authors use SAC from CQL).
Logged in metrics.csv: w_offline / w_online (mean w on the estimator's offline / online batches),
online_share (fraction of online transitions in each RL batch) and q_std (the ensemble's disagreement: std over
members of min(Q_i1, Q_i2)(s, a(s)) on the diagnostic states), besides naive_ft.py's collapse diagnostics (here
q_pi_* is mean_i min(Q_i1, Q_i2)(s, a(s)), the actor's objective).
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
from typing import Annotated

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
    checkpoint: Annotated[tuple[str, ...], tyro.conf.UseAppendAction] = ()
    """one agent's checkpoint.pt (td3_bc.py, naive_ft.py or conservative_ft.py: weights, optimizer states,
    normalization, dataset id) for ensemble member 0; given again, for members 1, 2, ...; members without one are
    pretrained here"""
    ensemble_size: int = 5
    """N: agents in the pessimistic Q-ensemble (5, as in the authors' experiments); 1 is balanced replay alone"""
    seed: int = 0
    """seeds Python, NumPy, torch, the online env and the evaluation episodes; same seed + same CPU model +
    same --threads => identical run on CPU"""
    device: str = "auto"
    """`auto` (cuda if available, else cpu), `cpu` or `cuda`"""
    threads: int = 0
    """torch intra-op threads; 0 keeps torch's default (recorded in args.json)"""
    offline_steps: int | None = None
    """TD3+BC gradient steps on the dataset for each member pretrained here (the members without --checkpoint, all
    side by side, each on its own batches); default 1,000,000. Members from --checkpoint do not train offline: when
    every member has one, there is no offline phase"""
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
    """width of the two hidden layers of actors and critics (with --checkpoint, the checkpoint's width is used)"""
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
    """default: `<dataset id with / replaced by ->__balanced_replay__<seed>__<unix time>`"""
    runs_dir: str = "runs"
    """parent folder of the run directory; an existing run directory is an error, never overwritten"""
    resume: str | None = None
    """continue the interrupted run in this run directory, to the result an uninterrupted run gives (same machine,
    same --threads); its args.json supplies every other flag, and a flag given here must agree with it"""


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


# ---------------------------------------------------------------------------------------------- helpers
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
    """One ensemble of all the members of `parts`, in order. A part is {"n": members, "actor", "critic",
    "actor_target", "critic_target", "actor_opt", "critic_opt": state dicts of this script's networks and Adams}.
    Actor tensors stack along dim 0; a critic tensor holds member i's twins at rows i and n + i, so the parts' first
    twins come first, then their second twins. Adam moments stack like their parameters; the step count (used only
    in Adam's bias correction, about 1 after 10^4 steps) is the parts' largest; a part without Adam states (an
    agent that never trained) gives None: fresh Adams."""
    def cat(tensors: list, twins: bool) -> torch.Tensor:
        tensors = [t.cpu() for t in tensors]
        if not twins:
            return torch.cat(tensors)
        return torch.cat([t[:p["n"]] for t, p in zip(tensors, parts)] + [t[p["n"]:] for t, p in zip(tensors, parts)])
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
    for name in ("ensemble_size", "online_capacity", "temperature", "warmup_online_steps", "ratio_batch_size", "ratio_lr"):
        if getattr(args, name) <= 0:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    if args.warmup_updates < 0:
        raise SystemExit(f"error: --warmup-updates must be >= 0, got {args.warmup_updates}")
    if not 0.0 < args.init_online_fraction < 1.0:
        raise SystemExit(f"error: --init-online-fraction must be in (0, 1), got {args.init_online_fraction}")
    if 0 < args.online_steps < args.warmup_online_steps:
        raise SystemExit(f"error: --online-steps {args.online_steps} is less than --warmup-online-steps "
                         f"{args.warmup_online_steps}: no update would ever run")
    if args.threads < 0:
        raise SystemExit(f"error: --threads must be >= 0, got {args.threads}")
    if args.device not in ("auto", "cpu", "cuda"):
        raise SystemExit(f"error: --device must be auto, cpu or cuda, got {args.device!r}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda, but torch sees no CUDA device")
    if len(args.checkpoint) > args.ensemble_size:
        raise SystemExit(f"error: {len(args.checkpoint)} --checkpoint for an ensemble of --ensemble-size "
                         f"{args.ensemble_size}: one checkpoint per member at most")
    for path in () if args.resume else args.checkpoint:
        if not os.path.isfile(path):
            raise SystemExit(f"error: checkpoint {path} does not exist")


if __name__ == "__main__":
    args = tyro.cli(Args, description=__doc__.split("\n\n")[0])
    script = Path(__file__).stem
    saved, state = load_run(args.resume, script) if args.resume else (None, None)  # state: the run's last checkpoint
    args = resume_args(args, saved["args"], __doc__.split("\n\n")[0]) if args.resume else args
    validate(args)
    requested = resolve_dataset_id(args.env, args.dataset_id) if args.env or args.dataset_id else None
    agents = [] if state else [load_checkpoint(p, requested) for p in args.checkpoint]  # members 0, 1, ... from files
    ckpt = state or (agents[0] if agents else None)
    for path, agent in zip(args.checkpoint[1:], agents[1:]):
        if (agent["dataset_id"], agent["args"]["hidden"]) != (ckpt["dataset_id"], ckpt["args"]["hidden"]):
            raise SystemExit(f"error: --checkpoint {path} ({agent['dataset_id']}, --hidden {agent['args']['hidden']}) "
                             f"does not fit --checkpoint {args.checkpoint[0]} ({ckpt['dataset_id']}, --hidden "
                             f"{ckpt['args']['hidden']}): an ensemble's members share one dataset and one width")
    if state and "ensemble_size" not in state:
        raise SystemExit(f"error: --resume {args.resume}: its checkpoint was written before balanced_replay.py had the "
                         f"Q-ensemble; continue its weights with --checkpoint instead")
    n_pre = args.ensemble_size - len(args.checkpoint)  # members pretrained here, after the loaded ones
    dataset_id = ckpt["dataset_id"] if ckpt else requested or resolve_dataset_id("hopper", None)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    run_name = args.run_name or f"{dataset_id.replace('/', '-')}__{script}__{args.seed}__{int(time.time())}"
    run_dir = Path(args.resume) if args.resume else Path(args.runs_dir) / run_name
    if run_dir.exists() and not args.resume:
        raise SystemExit(f"error: run directory {run_dir} already exists; choose another --run-name or --runs-dir, "
                         f"or continue it with --resume {run_dir}")
    args = dataclasses.replace(args, dataset_id=dataset_id, run_name=run_name, device=str(device),
                               offline_steps=0 if not n_pre else 1_000_000 if args.offline_steps is None else args.offline_steps,
                               hidden=ckpt["args"]["hidden"] if ckpt else args.hidden)
    if n_pre and not args.offline_steps:
        raise SystemExit(f"error: {n_pre} of the {args.ensemble_size} ensemble members have no --checkpoint, and "
                         f"--offline-steps 0 would finetune them untrained")
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
        raise SystemExit(f"error: checkpoint {args.checkpoint[0] if agents else run_dir} was made for "
                         f"{json.loads(ckpt['env_spec'])['id']} with "
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
    n_off, n_on = data.obs.shape[0], 0
    capacity = min(args.online_steps, args.online_capacity)  # online rows: a ring of this many
    replay = torch.empty(n_off + capacity, sum(split), device=device)
    replay[:n_off] = torch.cat([to_dev((data.obs - obs_mean) / obs_std), to_dev(data.actions),
                                to_dev(data.rewards[:, None]), to_dev((data.next_obs - obs_mean) / obs_std),
                                to_dev(data.terminated[:, None])], 1)
    eval_envs, env = [make_eval_env(data.dataset) for _ in range(args.eval_episodes)], make_env(data.dataset)

    tree = SumTree(n_off + capacity, device)  # priorities of every replay row; offline rows start at 1
    tree.update(torch.arange(n_off, device=device), torch.ones(n_off, device=device))
    max_priority = torch.tensor(initial_max_priority(n_off, args.init_online_fraction, args.warmup_online_steps),
                                dtype=torch.float64, device=device)

    # ------------------------------------------------------------------ networks and optimizers
    max_action = to_dev(act_space.high)
    NETS = ("actor", "critic", "actor_target", "critic_target", "actor_opt", "critic_opt")

    def networks(n: int, saved: dict | None = None) -> tuple:
        """An ensemble of n agents: actors, 2n critics (agent i's twins are critics i and n + i), target copies, one
        fused Adam each for all actors and for all critics (same math as n separate Adams); loaded from `saved`."""
        actor = EnsembleActor(obs_dim, act_dim, max_action, args.hidden, n).to(device)
        critic = Critic(obs_dim, act_dim, args.hidden, 2 * n).to(device)
        nets = (actor, critic, copy.deepcopy(actor).requires_grad_(False), copy.deepcopy(critic).requires_grad_(False),
                torch.optim.Adam(actor.parameters(), lr=args.lr, fused=True),
                torch.optim.Adam(critic.parameters(), lr=args.lr, fused=True))
        for name, obj in zip(NETS, nets):
            if saved and saved[name] is not None:
                obj.load_state_dict(saved[name])
            elif saved:  # stack_members: a member never trained
                print(f"note: a member has no {name} state (it never trained): the ensemble's {name} starts fresh")
        return nets

    # members 0..k-1 come from --checkpoint, k..N-1 are pretrained here (an ensemble of their own in the offline
    # phase); at the handoff all N become one ensemble
    members = state["members"] if state else [agent_part(agent) for agent in agents]
    if state:
        nets = networks(args.ensemble_size if state["phase"] == "online" else n_pre, state)
    else:
        nets = networks(n_pre) if n_pre else networks(args.ensemble_size, stack_members(members))
    actor, critic, actor_target, critic_target, actor_opt, critic_opt = nets
    pretrained_actor = None  # pi_0: frozen copy of the ensemble's actors when the online phase starts
    if state and state["pretrained_actor"] is not None:
        pretrained_actor = copy.deepcopy(actor).requires_grad_(False)
        pretrained_actor.load_state_dict(state["pretrained_actor"])
    weight_net = DensityRatio(obs_dim, act_dim, args.hidden).to(device)
    weight_opt = torch.optim.Adam(weight_net.parameters(), lr=args.ratio_lr, fused=True)
    if state:
        weight_net.load_state_dict(state["weight_net"])
        weight_opt.load_state_dict(state["weight_opt"])

    # ------------------------------------------------------------------ outputs
    run_dir.mkdir(parents=True, exist_ok=bool(args.resume))
    run_info = saved if args.resume else \
        {"algorithm": script, "args": dataclasses.asdict(args), "meta": run_metadata(device), "resumes": [],
         "checkpoint_sha256": weights_sha256(ckpt) if ckpt else None,  # the agent a --checkpoint run starts from
         "members_sha256": [weights_sha256(agent) for agent in agents]}  # every member from --checkpoint
    if args.resume:  # the run's args stay as they were; each resume adds when, where from, with which code
        run_info["resumes"].append({"from": f"{state['phase']} step {state['step']}" if state else "the start",
                                    "meta": run_metadata(device)})
    atomic_save(run_dir / "args.json", json.dumps(run_info, indent=2))
    columns = ["phase", "step", "critic_loss", "actor_loss", "reg_loss", "q_mean", "lmbda", "pi_dist",
               "q_pi_offline", "q_pi_online", "q_std", "w_offline", "w_online",
               "online_share", "ratio_loss", "updates", "train_return", "eval_return", "eval_return_std", "eval_score",
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
    print(f"ensemble of {args.ensemble_size}: {len(args.checkpoint)} from --checkpoint, {n_pre} pretrained here" +
          (f" ({args.offline_steps} steps each)" if n_pre else " (no offline phase)"), flush=True)
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
            "weight_net": weight_net.state_dict(), "weight_opt": weight_opt.state_dict(),
            "ensemble_size": args.ensemble_size, "members": members,
            "rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                    "diagnostics": diag_gen.get_state()},
            "run": {"files": {n: (run_dir / n).stat().st_size for n in ("metrics.csv", "episodes.csv")},
                    "evals": evals, "n_on": n_on, "elapsed_s": time.perf_counter() - start,
                    "reset_state": reset_state, "obs": obs_t,
                    "episode": (ep_return, ep_len, recent_returns), "tree": tree.levels,
                    "max_priority": max_priority, "updates_done": updates_done}})
        last_checkpoint = f"{phase} step {step}"

    sums, counts, evals, last_checkpoint = {}, {}, [], None
    obs_t, ep_return, ep_len, recent_returns = None, 0.0, 0, []  # online: normalized s on the device, episode so far
    reset_state = None  # the env RNG state before the current episode's reset (None: the first, seeded reset)
    updates_done = 0  # online updates so far (the warm-up burst included)
    diag_gen = torch.Generator(device=device).manual_seed(args.seed)  # diagnostics never touch the training RNG
    off_done, on_done = 0, None  # steps already done in each phase (None: the online phase has not begun)
    if state:  # --resume: the rest of the state the checkpoint holds; the RNGs last, right before the loop
        run, phase, last_checkpoint = state["run"], state["phase"], f"{state['phase']} step {state['step']}"
        off_done = state["step"] if phase == "offline" else args.offline_steps
        evals, n_on, rows_saved = run["evals"], run["n_on"], run["n_on"]
        tree.levels, max_priority, updates_done = [x.to(device) for x in run["tree"]], run["max_priority"].to(device), \
            run["updates_done"]
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

    def accumulate(info: dict) -> None:
        """Running sums of update info, on the device until a metrics row is written."""
        for k, v in info.items():
            sums[k], counts[k] = sums.get(k, 0.0) + v, counts.get(k, 0) + 1

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
        """Accumulate update info; every --log-every steps (and at evaluations) write a row."""
        global sums, counts, t_last, row_from
        accumulate(info or {})
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
    for step in range(off_done + 1, args.offline_steps + 1):  # the members without --checkpoint, side by side
        idx = torch.randint(n_off, (actor.n, args.batch_size), device=device)  # uniform, each member its own batch
        info = update(step, replay[idx].split(split, dim=-1), actor, actor_target, critic, critic_target, actor_opt,
                      critic_opt, args, offline=True)
        log("offline", step, args.offline_steps, info)
    if args.offline_steps == 0 and args.online_steps == 0 and not state:  # nothing to train: evaluate as they are
        log("offline", 0, 0, None)

    # ------------------------------------------------------------------ online phase: act, store, update
    if args.online_steps > 0:
        if on_done is None:  # the handoff: one ensemble, pi_0, the first reset, the step-0 evaluation (and checkpoint)
            if actor.n < args.ensemble_size:  # the members from --checkpoint, then those pretrained here
                trained = {"n": actor.n, **{name: obj.state_dict() for name, obj in zip(NETS, nets)}}
                nets = networks(args.ensemble_size, stack_members(members + [trained]))
                actor, critic, actor_target, critic_target, actor_opt, critic_opt = nets
            pretrained_actor = copy.deepcopy(actor).requires_grad_(False)
            if args.reset_optimizers:  # fresh Adam moments for the online phase
                actor_opt = torch.optim.Adam(actor.parameters(), lr=args.lr, fused=True)
                critic_opt = torch.optim.Adam(critic.parameters(), lr=args.lr, fused=True)
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
            # a truncated step is stored as non-terminal; it enters the tree at the running maximum priority
            row = n_off + n_on % capacity
            # [r | normalized s' | terminated] in one upload; s' is then reused as the next step's s
            r_s2_term = to_dev(np.concatenate([[reward], (next_obs - obs_mean) / obs_std, [terminated]]))
            next_t = r_s2_term[1:-1]
            replay[row] = torch.cat([obs_t, a, r_s2_term])
            tree.update(torch.tensor([row], device=device), max_priority[None])
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
            # no update before the warm-up transitions are in; then the warm-up burst; then one per step
            n_updates = 0 if step < args.warmup_online_steps else \
                args.warmup_updates if step == args.warmup_online_steps else 1
            info = None
            for _ in range(n_updates):
                if info is not None:
                    accumulate(info)
                updates_done += 1
                idx = tree.sample(args.batch_size)  # proportional to priority, stratified
                batch = replay[idx].split(split, dim=1)
                info = update(updates_done, batch, actor, actor_target, critic, critic_target, actor_opt,
                              critic_opt, args, offline=False)
                off = replay[torch.randint(n_off, (args.ratio_batch_size,), device=device)].split(split, dim=1)
                on = replay[n_off + torch.randint(min(n_on, capacity), (args.ratio_batch_size,), device=device)]
                priority, stats = update_ratio_and_priorities(weight_net, weight_opt, tree, idx, batch, off,
                                                              on.split(split, dim=1), args)
                max_priority = torch.maximum(max_priority, priority.max().to(torch.float64))
                info.update(stats, online_share=(idx >= n_off).float().mean())
            extra = None
            if step % args.log_every == 0 or step % args.eval_every == 0 or step == args.online_steps:
                with torch.no_grad():  # collapse diagnostics on fresh offline and online states
                    s_off = replay[torch.randint(n_off, (1024,), device=device, generator=diag_gen), :obs_dim]
                    s_on = replay[n_off + torch.randint(min(n_on, capacity), (1024,), device=device,
                                                        generator=diag_gen), :obs_dim]
                    s = torch.cat([s_off, s_on])
                    pi = actor(s)  # the ensemble's action
                    q_pi = critic(s, pi).view(2, actor.n, -1).min(0).values  # min(Q_i1, Q_i2)(s, a(s)), (N, 2048)
                    extra = {"pi_dist": float((pi - pretrained_actor(s)).norm(dim=-1).mean()),
                             "q_pi_offline": float(q_pi[:, :1024].mean()), "q_pi_online": float(q_pi[:, 1024:].mean()),
                             "q_std": float(q_pi.std(0, correction=0).mean()),  # disagreement over members
                             "train_return": float(np.mean(recent_returns)) if recent_returns else None,
                             "updates": updates_done}
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
