"""Conservative finetuning: TD3 with a decaying trust region around the frozen pretrained policy pi_0.

OUR READING of Luo et al. 2023 (arXiv 2303.17396), whose abstract names policy collapse when switching from TD3+BC
to TD3 and proposes "conservative policy optimization" without its equations (README.md explains the choices):

    L_actor = -lambda * mean Q1(s, pi(s)) + beta_t * mean_{batch, action dims} (pi(s) - pi_ref(s))^2
    lambda  = alpha / mean|Q1(s, pi(s))|  (detached, as TD3+BC),   beta_t: --beta-start -> --beta-end linearly
              over --beta-decay-steps online steps,   pi_ref = pi_0, or with --anchor-tau tau > 0 a moving centre,
              pi_ref <- pi_ref + tau * (pi - pi_ref) after every actor update

The trust region holds pi near pi_0 while the critic is still wrong about actions the data never covered; beta decays,
so finetuning becomes TD3-like; lambda makes beta mean the same across reward scales. Replay: every batch half
offline, half online (`--offline-ratio 0.5`). --beta-rule td (OUR READING) replaces the schedule: log beta_t +=
--beta-lr * (signal / --beta-target - 1) per actor update, within [--beta-end, --beta-start], the signal being the
batch's online rows' TD error over its offline rows'. --beta-rule lagrange (OUR READING) makes beta_t the multiplier
of the constraint "a training episode scores at least pi_0's step-0 score minus --beta-margin of it", pi_0 acting with
the exploration noise as training episodes do: after each episode, log beta_t += --beta-lr * violation, in the same
bounds. --anchor-critic puts the trust region into the critic's target too,
y = r + gamma (min Q'(s', a') - beta_t mean|Q'| / alpha * mean (a' - pi_ref(s'))^2), as PROTO (Li et al. 2023) does
with a slowly moving pi_ref (OUR READING of its TD3 variant). Everything else is line-for-line
naive_ft.py (`diff algorithms/naive_ft.py algorithms/conservative_ft.py` shows only the method)."""
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
    checkpoint: str | None = None
    """a td3_bc.py checkpoint.pt to start from: weights, optimizer states, state normalization, dataset id"""
    seed: int = 0
    """seeds everything: same seed, CPU model and --threads give an identical run on a CPU"""
    device: str = "auto"
    """auto (cuda if available, else cpu), cpu or cuda"""
    threads: int = 0
    """torch intra-op threads; 0: as many as torch picks (args.json records the number used)"""
    offline_steps: int | None = None
    """TD3+BC steps on the dataset first (None: 1,000,000, or 0 with --checkpoint)"""
    online_steps: int = 250_000
    """environment steps of online finetuning after the offline phase, one update per step"""
    offline_ratio: float = 0.5
    """online batches: round(r*B) rows from the offline data, the rest online; -1: uniform over both"""
    reset_optimizers: bool = False
    """start the online phase with fresh Adam states instead of the pretrained moments"""
    beta_start: float = 1.0
    """trust-region weight beta_t at the first online step"""
    beta_end: float = 0.1
    """trust-region weight after --beta-decay-steps online steps (and from then on)"""
    beta_decay_steps: int = 100_000
    """online steps over which beta_t decays linearly from --beta-start to --beta-end (0: --beta-end at once)"""
    beta_rule: str = "fixed"
    """how beta_t moves: fixed (the linear schedule), td (online rows' TD error over the offline's) or lagrange"""
    beta_lr: float | None = None
    """td: log beta_t += beta_lr * (signal / --beta-target - 1) per actor update; lagrange: += beta_lr * violation
    (None: 0.5 with --beta-rule lagrange, as screened; else 3e-3)"""
    beta_margin: float = 0.1
    """--beta-rule lagrange: a training episode may score down to pi_0's noisy step-0 score minus this fraction of it"""
    beta_target: float | None = None
    """--beta-rule td: the signal's set point (None: 2)"""
    anchor_tau: float = 0.0
    """the trust region's centre: 0 keeps the frozen pi_0; tau > 0 moves it, pi_ref <- pi_ref + tau (pi - pi_ref)"""
    anchor_critic: bool = False
    """the trust region inside the critic's target too, at the next action: PROTO's (Li et al. 2023) critic half"""
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
    """width of the two hidden layers of actor and critics (with --checkpoint, the checkpoint's)"""
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
    """None: <dataset id, / replaced by ->__conservative_ft__<seed>__<unix time>"""
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
    check_flags(args, ("offline_steps", "online_steps", "expl_noise", "beta_start", "beta_end", "beta_decay_steps",
                       "beta_lr", "beta_margin"), ("batch_size", "eval_every", "eval_episodes", "log_every",
                                                   "policy_freq", "hidden", "collapse_window", "beta_target"))
    if not (0.0 <= args.offline_ratio <= 1.0 or args.offline_ratio == -1.0):
        raise SystemExit(f"error: --offline-ratio must be in [0, 1], or -1 for uniform over all data, "
                         f"got {args.offline_ratio}")
    if not 0.0 <= args.anchor_tau <= 1.0:
        raise SystemExit(f"error: --anchor-tau must be in [0, 1], got {args.anchor_tau}")
    if args.beta_rule not in ("fixed", "td", "lagrange") or args.beta_rule != "fixed" and not (
            0 < args.beta_end <= args.beta_start and (0 < args.offline_ratio < 1 or args.beta_rule == "lagrange")):
        raise SystemExit(f"error: --beta-rule {args.beta_rule}: the rules are fixed, td and lagrange; td and lagrange "
                         f"need 0 < --beta-end <= --beta-start, td 0 < --offline-ratio < 1")


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


def beta_schedule(step: int, args) -> float:
    """beta_t: --beta-start at online step 1, linear to --beta-end after --beta-decay-steps steps, then constant."""
    frac = min(1.0, (step - 1) / args.beta_decay_steps) if args.beta_decay_steps > 0 else 1.0
    return args.beta_start + frac * (args.beta_end - args.beta_start)


def dual_ascent(log_beta: torch.Tensor, ep_return: float, step0_score: float, dataset, args) -> float:
    """--beta-rule lagrange, after a training episode: the constraint's violation (the signal), (step-0 score minus
    --beta-margin of it, minus the episode's score) over |step-0 score|, and log beta_t += --beta-lr * violation within
    [log --beta-end, log --beta-start]: beta_t grows while episodes score below the line, and decays while above it."""
    line = step0_score - args.beta_margin * abs(step0_score)  # the constraint: an episode's score >= line
    signal = (line - float(normalized_score(dataset, ep_return))) / max(abs(step0_score), 1e-6)
    log_beta.add_(args.beta_lr * signal).clamp_(math.log(args.beta_end), math.log(args.beta_start))  # no host sync
    return signal


def noisy_score(pi_0, envs, obs_mean, obs_std, max_action, dataset, args, device) -> float:
    """--beta-rule lagrange's step-0 score: pi_0's mean score on the evaluation episodes, acting as training episodes
    do, with the exploration noise (its own generator `noisy`, seeded with --seed: the same on --resume)."""
    noisy = torch.Generator(device=device).manual_seed(args.seed)

    def noisy_pi_0(s):  # a = clip(pi_0(s) + N(0, (sigma * max_action)^2)), as in the online loop
        a_pi_0 = pi_0(s)
        noise = torch.randn(a_pi_0.shape, generator=noisy, device=device) * args.expl_noise * max_action
        return (a_pi_0 + noise).clamp(-max_action, max_action)
    noisy_return = evaluate(noisy_pi_0, envs, obs_mean, obs_std, args.seed, device).mean()
    return float(normalized_score(dataset, noisy_return))


def diagnostics(replay, n_off: int, n_on: int, obs_dim: int, actor, critic, pretrained_actor, gen) -> dict:
    """Collapse diagnostics on 1024 fresh offline and 1024 online states (drawn with their own RNG): mean
    ||pi(s) - pi_0(s)|| and mean Q1(s, pi(s)) on each half."""
    with torch.no_grad():
        s = replay[torch.cat([torch.randint(n_off, (1024,), device=replay.device, generator=gen),  # offline, online
                              n_off + torch.randint(n_on, (1024,), device=replay.device, generator=gen)]), :obs_dim]
        pi = actor(s)
        q_pi = critic(s, pi, n=1)[0]
        return {"pi_dist": float((pi - pretrained_actor(s)).norm(dim=-1).mean()),
                "q_pi_offline": float(q_pi[:1024].mean()), "q_pi_online": float(q_pi[1024:].mean())}


# ---------------------------------------------------------------------------------------------- one update
def update(step: int, batch, actor, actor_target, critic, critic_target, actor_opt, critic_opt, args,
           offline: bool, beta=0.0, anchor=None, log_beta=None) -> dict:
    """One gradient step on batch = (s, a, r, s', terminated) with r, terminated of shape (B, 1): TD3+BC when
    `offline`, else TD3 with the trust region beta * (pi - pi_ref)^2. Returns detached scalar tensors."""
    obs, act, rew, next_obs, terminated = batch
    rew, terminated = rew.squeeze(-1), terminated.squeeze(-1)
    with torch.no_grad():
        # target-policy smoothing: a' = clip(pi'(s') + clip(eps, -c, c), -max, max), eps ~ N(0, sigma^2)
        max_action = actor.max_action
        noise = (torch.randn_like(act) * args.policy_noise).clamp(-args.noise_clip, args.noise_clip) * max_action
        next_act = torch.max(torch.min(actor_target(next_obs) + noise, max_action), -max_action)
        # clipped double-Q target: y = r + gamma * (1 - terminated) * min_i Q'_i(s', a')
        q_next = critic_target(next_obs, next_act).min(0).values
        if not offline and args.anchor_critic:  # the trust region in Q's units (beta/lambda), at pi_ref's next action
            q_next = q_next - beta * q_next.abs().mean() / args.alpha * ((next_act - anchor(next_obs)) ** 2).mean(-1)
        target_q = rew + args.gamma * (1.0 - terminated) * q_next
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
        else:  # conservative finetuning: trust region around pi_ref (the frozen pretrained policy pi_0 by default)
            lmbda = args.alpha / q_pi.abs().mean().detach()  # lambda = alpha / mean|Q(s, pi(s))|
            reg_loss = beta * ((pi - anchor(obs)) ** 2).mean()  # beta_t * mean (pi(s) - pi_ref(s))^2
        actor_loss = -lmbda * q_pi.mean() + reg_loss
        actor_opt.zero_grad(set_to_none=True)
        actor_loss.backward(inputs=list(actor.parameters()))  # gradients for the actor only
        actor_opt.step()
        with torch.no_grad():  # Polyak averaging, theta' <- theta' + tau * (theta - theta')
            torch._foreach_lerp_(list(actor_target.parameters()), list(actor.parameters()), args.tau)
            torch._foreach_lerp_(list(critic_target.parameters()), list(critic.parameters()), args.tau)
            if not offline and args.anchor_tau > 0:  # pi_ref <- pi_ref + tau_ref * (pi - pi_ref)
                torch._foreach_lerp_(list(anchor.parameters()), list(actor.parameters()), args.anchor_tau)
            if not offline and args.beta_rule == "td":  # signal: mean TD error^2 of the online rows over the offline's
                td2, k = ((q - target_q) ** 2).mean(0), round(args.offline_ratio * len(obs))  # offline rows come first
                info["beta_signal"] = ratio = td2[k:].mean() / td2[:k].mean() / args.beta_target  # signal / target
                # log beta_t += --beta-lr * (signal / target - 1), kept in [log --beta-end, log --beta-start]
                log_beta.add_((ratio - 1) * args.beta_lr).clamp_(math.log(args.beta_end), math.log(args.beta_start))
        info.update(actor_loss=actor_loss.detach(), reg_loss=reg_loss.detach(), lmbda=lmbda)
    return info


# ---------------------------------------------------------------------------------------------- training
def train(args: Args) -> None:
    script = Path(__file__).stem
    # state: the last checkpoint of a run continued with --resume (its fields checked, the anchor's and beta's too)
    args, saved, state = start(args, script, {"anchor": dict | None, "beta_rule": dict | None})
    validate(args)
    requested = resolve_dataset_id(args.env, args.dataset_id) if args.env or args.dataset_id else None
    ckpt = state or (load_checkpoint(args.checkpoint, requested) if args.checkpoint else None)
    args, device, run_dir = prepare(
        args, script, ckpt["dataset_id"] if ckpt else requested or resolve_dataset_id("hopper", None),
        offline_steps=(0 if ckpt else 1_000_000) if args.offline_steps is None else args.offline_steps,
        hidden=ckpt["args"]["hidden"] if ckpt else args.hidden, beta_target=args.beta_target or
        (2.0 if args.beta_rule == "td" else None), beta_lr=args.beta_lr if args.beta_lr is not None else
        (0.5 if args.beta_rule == "lagrange" else 3e-3))

    # data on the device: one replay table, the offline rows first, then room for every online transition
    n_on, capacity = 0, args.online_steps
    data, replay, split, about = load_replay(args.dataset_id, ckpt, args.checkpoint, capacity, device)
    n_off, (obs_dim, act_dim), (obs_mean, obs_std) = len(data.obs), split[:2], (about["obs_mean"], about["obs_std"])
    to_dev = lambda x: torch.as_tensor(x, dtype=torch.float32, device=device)  # noqa: E731
    eval_envs, env = [make_eval_env(data.dataset) for _ in range(args.eval_episodes)], make_env(data.dataset)

    def sample(online: bool):
        idx = replay_indices(n_off, n_on if online else 0, args.batch_size, args.offline_ratio, device)
        return replay[idx].split(split, dim=1)

    # networks and optimizers: weights, targets and Adam states from the checkpoint, if any
    max_action = to_dev(data.dataset.action_space.high)
    actor = Actor(obs_dim, act_dim, max_action, args.hidden).to(device)
    critic = Critic(obs_dim, act_dim, args.hidden).to(device)
    actor_target = Actor(obs_dim, act_dim, max_action, args.hidden).to(device).requires_grad_(False)
    critic_target = Critic(obs_dim, act_dim, args.hidden).to(device).requires_grad_(False)
    actor_target.load_state_dict(actor.state_dict())
    critic_target.load_state_dict(critic.state_dict())
    actor_opt = torch.optim.Adam(actor.parameters(), lr=args.lr, fused=True)  # fused: one kernel, the same math
    critic_opt = torch.optim.Adam(critic.parameters(), lr=args.lr, fused=True)
    for name, obj in zip(("actor", "critic", "actor_target", "critic_target", "actor_opt", "critic_opt"),
                         (actor, critic, actor_target, critic_target, actor_opt, critic_opt) if ckpt else ()):
        obj.load_state_dict(ckpt[name])
    pretrained_actor = anchor = None  # pi_0: a frozen copy of the actor when the online phase starts; pi_ref
    if state and state["pretrained_actor"] is not None:
        pretrained_actor = copy.deepcopy(actor).requires_grad_(False)
        pretrained_actor.load_state_dict(state["pretrained_actor"])
        anchor = copy.deepcopy(pretrained_actor) if args.anchor_tau > 0 else pretrained_actor
        anchor.load_state_dict(state["anchor"] or state["pretrained_actor"])
    log_beta = (state["beta_rule"]["log_beta"] if state and state["beta_rule"] else  # --beta-rule td: log beta_t
                torch.tensor(float(args.beta_start)).log()).to(device)

    columns = ["phase", "step", "critic_loss", "actor_loss", "reg_loss", "q_mean", "lmbda", "pi_dist",
               "q_pi_offline", "q_pi_online", "beta", "train_return", "eval_return", "eval_return_std", "eval_score",
               "updates_per_s", "elapsed_s", "beta_signal"]

    def checkpoint(phase: str, step: int) -> dict:  # all the rest of the run depends on (Run.write adds the files)
        return {"args": dataclasses.asdict(args), **about, "actor": actor.state_dict(), "critic": critic.state_dict(),
                "actor_target": actor_target.state_dict(), "critic_target": critic_target.state_dict(),
                "actor_opt": actor_opt.state_dict(), "critic_opt": critic_opt.state_dict(),
                "pretrained_actor": pretrained_actor.state_dict() if pretrained_actor else None, "rng": rng_state(gen),
                "anchor": anchor.state_dict() if anchor is not pretrained_actor else None,
                "beta_rule": {"log_beta": log_beta} if args.beta_rule != "fixed" else None,
                "run": {"n_on": n_on, "online_rows": replay[n_off:n_off + min(n_on, capacity)].to("cpu", copy=True),
                        "obs": obs_t, "ep_return": ep_return, "episode": episode, "recent_returns": recent_returns,
                        "reset_state": reset_state}}

    gen = torch.Generator(device=device).manual_seed(args.seed)  # the diagnostics' own RNG
    # the online loop's state: online rows, normalized s, the episode's return and actions, returns since the last
    # metrics row, the env's RNG state before the current episode's reset (None: the first, seeded reset)
    n_on, obs_t, ep_return, episode, recent_returns, reset_state = restore(
        state, env, replay, n_off, gen, lambda o: to_dev((o - obs_mean) / obs_std), run_dir)
    run = Run(run_dir, columns, args, script, saved, state, device, data,  # args.json: the agent a new run starts from
              checkpoint_sha256=weights_sha256(ckpt) if ckpt and not state else None)
    off_done = state["step"] if state and state["phase"] == "offline" else args.offline_steps if state else 0
    on_done = state["step"] if state and state["phase"] == "online" else None  # None: the online phase has not begun

    # ------------------------------------------------------------------ offline phase: TD3+BC on the dataset
    for step in range(off_done + 1, args.offline_steps + 1):
        run.add(update(step, sample(online=False), actor, actor_target, critic, critic_target, actor_opt,
                       critic_opt, args, offline=True))
        evaluated = step % args.eval_every == 0 or step == args.offline_steps  # evaluate, then checkpoint
        if evaluated or step % args.log_every == 0:
            row = run.row("offline", step)  # the window's mean losses: the host reads the device sums here only
            returns = evaluate(actor, eval_envs, obs_mean, obs_std, args.seed, device) if evaluated else None
            run.write(row, args.offline_steps, returns, checkpoint("offline", step) if evaluated else None)
    if args.offline_steps == args.online_steps == 0 and not state:  # nothing to train: evaluate the agent as it is
        run.write(run.row("offline", 0), 0, evaluate(actor, eval_envs, obs_mean, obs_std, args.seed, device),
                  checkpoint("offline", 0))

    # ------------------------------------------------------------------ online phase: act, store, update
    if args.online_steps > 0:
        if on_done is None:  # the handoff: pi_0, the first reset, the step-0 evaluation
            pretrained_actor = copy.deepcopy(actor).requires_grad_(False)
            anchor = copy.deepcopy(pretrained_actor) if args.anchor_tau > 0 else pretrained_actor  # pi_ref = pi_0
            if args.reset_optimizers:  # fresh Adam moments for the online phase
                actor_opt, critic_opt = (torch.optim.Adam(m.parameters(), args.lr, fused=True) for m in (actor, critic))
            obs_t = to_dev((env.reset(seed=args.seed)[0] - obs_mean) / obs_std)  # normalized s, uploaded once a step
            run.write(run.row("online", 0), args.online_steps,  # step 0: the pretrained policy, before any update
                      evaluate(actor, eval_envs, obs_mean, obs_std, args.seed, device), checkpoint("online", 0))
        if args.beta_rule == "lagrange":  # the line: pi_0's step-0 score with the exploration noise
            score0 = noisy_score(pretrained_actor, eval_envs, obs_mean, obs_std, max_action, data.dataset, args, device)
            print(f"lagrange: training episodes are held to a step-0 score of {score0:.2f} (pi_0 with the noise)")
        for step in range((on_done or 0) + 1, args.online_steps + 1):
            with torch.no_grad():  # a = clip(pi(s) + N(0, (sigma * max_action)^2))
                a = actor(obs_t)
                a = (a + torch.randn_like(a) * args.expl_noise * max_action).clamp(-max_action, max_action)
            action = a.cpu().numpy()
            run.check_finite("online", step, action)  # non-finite weights: stop before the env sees the action
            next_obs, reward, terminated, truncated, _ = env.step(action)
            # a truncated step is stored as non-terminal: its target still bootstraps from s'
            # [r | normalized s' | terminated] in one upload; s' is then reused as the next step's s
            r_s2_term = to_dev(np.concatenate([[reward], (next_obs - obs_mean) / obs_std, [terminated]]))
            replay[n_off + n_on] = torch.cat([obs_t, a, r_s2_term])
            n_on, obs_t, ep_return = n_on + 1, r_s2_term[1:-1], ep_return + float(reward)
            episode.append(action)
            if terminated or truncated:
                run.episode(step, ep_return, len(episode))
                recent_returns.append(ep_return)
                if args.beta_rule == "lagrange":  # beta_t: the multiplier of "episodes score >= step-0 score - margin"
                    run.add({"beta_signal": dual_ascent(log_beta, ep_return, score0, data.dataset, args)})
                reset_state = env.unwrapped.np_random.bit_generator.state  # how the next episode starts (--resume)
                obs_t, ep_return, episode = to_dev((env.reset()[0] - obs_mean) / obs_std), 0.0, []
            beta = beta_schedule(step, args) if args.beta_rule == "fixed" else log_beta.exp()  # beta_t
            run.add(update(step, sample(online=True), actor, actor_target, critic, critic_target, actor_opt,
                           critic_opt, args, offline=False, beta=beta, anchor=anchor, log_beta=log_beta))
            evaluated = step % args.eval_every == 0 or step == args.online_steps  # evaluate, then checkpoint
            if evaluated or step % args.log_every == 0:  # a metrics row, with the collapse diagnostics
                row = run.row("online", step, {
                    **diagnostics(replay, n_off, n_on, obs_dim, actor, critic, pretrained_actor, gen),
                    "beta": float(beta),
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
