"""Update speed of our TD3+BC against a *textbook* TD3+BC, in one process, same shapes and thread count.

The textbook yardstick is written the way reference implementations (the TD3+BC authors' code, CORL) do it:
two separate critic modules with two separate `torch.optim.Adam` optimizers (PyTorch's default implementation),
a Python loop over parameters for the soft update, a loss `.item()` every step, and batches sampled with NumPy
indices and copied into fresh tensors. Ours is `algorithms/td3_bc.py`'s `update` with its sampling (one gather
from a device table). Both are timed in alternating rounds after a warm-up; we report the median round.

    python scripts/bench_speed.py --threads 2          # prints a Markdown table; --json-out saves the numbers
"""
from __future__ import annotations

import copy
import json
import os
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "algorithms"))
import td3_bc  # noqa: E402


@dataclass
class Args:
    threads: int = 2
    """torch intra-op threads for every measurement"""
    batch_size: int = 256
    """transitions per update"""
    obs_dim: int = 11
    """observation size (Hopper: 11)"""
    act_dim: int = 3
    """action size (Hopper: 3)"""
    dataset_size: int = 1_000_000
    """rows of the synthetic offline table both implementations sample from"""
    rounds: int = 5
    """alternating timing rounds per implementation; the median is reported"""
    round_updates: int = 200
    """updates per timing round"""
    warmup: int = 50
    """untimed updates before timing"""
    json_out: str | None = None
    """also write the results to this JSON file"""


# ------------------------------------------------------------------ the textbook yardstick
class TextbookActor(nn.Module):
    def __init__(self, obs_dim, act_dim, max_action=1.0):
        super().__init__()
        self.l1, self.l2, self.l3 = nn.Linear(obs_dim, 256), nn.Linear(256, 256), nn.Linear(256, act_dim)
        self.max_action = max_action

    def forward(self, s):
        return self.max_action * torch.tanh(self.l3(F.relu(self.l2(F.relu(self.l1(s))))))


class TextbookCritic(nn.Module):
    def __init__(self, obs_dim, act_dim):
        super().__init__()
        self.l1, self.l2, self.l3 = nn.Linear(obs_dim + act_dim, 256), nn.Linear(256, 256), nn.Linear(256, 1)

    def forward(self, s, a):
        return self.l3(F.relu(self.l2(F.relu(self.l1(torch.cat([s, a], 1))))))


class TextbookTD3BC:
    """TD3+BC as reference code writes it; `bc=False` drops the BC term (the TD3 yardstick)."""

    def __init__(self, obs_dim, act_dim, bc=True, alpha=2.5, gamma=0.99, tau=0.005, policy_noise=0.2,
                 noise_clip=0.5, policy_freq=2, lr=3e-4):
        self.actor = TextbookActor(obs_dim, act_dim)
        self.actor_target = copy.deepcopy(self.actor)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=lr)
        self.critic1, self.critic2 = TextbookCritic(obs_dim, act_dim), TextbookCritic(obs_dim, act_dim)
        self.critic1_target, self.critic2_target = copy.deepcopy(self.critic1), copy.deepcopy(self.critic2)
        self.critic1_opt = torch.optim.Adam(self.critic1.parameters(), lr=lr)
        self.critic2_opt = torch.optim.Adam(self.critic2.parameters(), lr=lr)
        self.bc, self.alpha, self.gamma, self.tau = bc, alpha, gamma, tau
        self.policy_noise, self.noise_clip, self.policy_freq = policy_noise, noise_clip, policy_freq
        self.it = 0

    def train(self, s, a, r, s2, not_done):
        self.it += 1
        with torch.no_grad():
            noise = (torch.randn_like(a) * self.policy_noise).clamp(-self.noise_clip, self.noise_clip)
            a2 = (self.actor_target(s2) + noise).clamp(-1.0, 1.0)
            target_q = r + not_done * self.gamma * torch.min(self.critic1_target(s2, a2), self.critic2_target(s2, a2))
        q1, q2 = self.critic1(s, a), self.critic2(s, a)
        critic_loss = F.mse_loss(q1, target_q) + F.mse_loss(q2, target_q)
        self.critic1_opt.zero_grad()
        self.critic2_opt.zero_grad()
        critic_loss.backward()
        self.critic1_opt.step()
        self.critic2_opt.step()
        out = {"critic_loss": critic_loss.item()}
        if self.it % self.policy_freq == 0:
            pi = self.actor(s)
            q = self.critic1(s, pi)
            actor_loss = -q.mean()
            if self.bc:
                lmbda = self.alpha / q.abs().mean().detach()
                actor_loss = -lmbda * q.mean() + F.mse_loss(pi, a)
            self.actor_opt.zero_grad()
            actor_loss.backward()
            self.actor_opt.step()
            for net, target in ((self.critic1, self.critic1_target), (self.critic2, self.critic2_target),
                                (self.actor, self.actor_target)):
                for p, tp in zip(net.parameters(), target.parameters()):
                    tp.data.copy_(self.tau * p.data + (1 - self.tau) * tp.data)
            out["actor_loss"] = actor_loss.item()
        return out


def textbook_sampler(arrays, batch_size):
    """The reference replay buffer: NumPy indices, then fresh float tensors per batch."""
    s, a, r, s2, not_done = arrays
    def sample():
        ind = np.random.randint(0, len(s), size=batch_size)
        return tuple(torch.FloatTensor(x[ind]) for x in (s, a, r, s2, not_done))
    return sample


# ------------------------------------------------------------------ ours, as td3_bc.py runs it
def ours(obs_dim, act_dim, table, batch_size, targs):
    actor = td3_bc.Actor(obs_dim, act_dim, torch.ones(act_dim))
    critic = td3_bc.Critic(obs_dim, act_dim)
    actor_target = copy.deepcopy(actor).requires_grad_(False)
    critic_target = copy.deepcopy(critic).requires_grad_(False)
    actor_opt = torch.optim.Adam(actor.parameters(), lr=targs.lr, fused=True)
    critic_opt = torch.optim.Adam(critic.parameters(), lr=targs.lr, fused=True)
    split = [obs_dim, act_dim, 1, obs_dim, 1]
    step = [0]
    def one_update():
        step[0] += 1
        idx = torch.randint(table.shape[0], (batch_size,))
        batch = table[idx].split(split, 1)
        return td3_bc.update(step[0], batch, actor, actor_target, critic, critic_target, actor_opt, critic_opt, targs)
    return one_update


def time_rounds(fns: dict, rounds: int, n: int, warmup: int) -> dict:
    """Median updates/s of each fn over `rounds` alternating rounds of `n` calls."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    rates = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t = time.perf_counter()
            for _ in range(n):
                fn()
            rates[k].append(n / (time.perf_counter() - t))
    return {k: float(np.median(v)) for k, v in rates.items()}


if __name__ == "__main__":
    args = tyro.cli(Args)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    np.random.seed(0)
    o, a, n = args.obs_dim, args.act_dim, args.dataset_size
    rng = np.random.default_rng(0)
    arrays = (rng.standard_normal((n, o), dtype=np.float32), rng.uniform(-1, 1, (n, a)).astype(np.float32),
              rng.standard_normal((n, 1), dtype=np.float32), rng.standard_normal((n, o), dtype=np.float32),
              np.ones((n, 1), np.float32))
    table = torch.cat([torch.from_numpy(x) for x in arrays[:4]] + [1 - torch.from_numpy(arrays[4])], 1)
    textbook = TextbookTD3BC(o, a)
    sample = textbook_sampler(arrays, args.batch_size)
    fns = {"textbook TD3+BC update": lambda: textbook.train(*sample()),
           "ours: td3_bc.py update": ours(o, a, table, args.batch_size, td3_bc.Args())}
    rates = time_rounds(fns, args.rounds, args.round_updates, args.warmup)
    base = rates["textbook TD3+BC update"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}, "
          f"obs {o}, act {a}, {args.rounds} rounds x {args.round_updates} updates (median)\n")
    print("| implementation | updates/s | vs textbook |\n|---|---|---|")
    for k, v in rates.items():
        print(f"| {k} | {v:.0f} | {v / base:.2f}x |")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"args": vars(args), "torch": torch.__version__, "updates_per_s": rates}, f, indent=2)
