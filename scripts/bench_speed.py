"""Speed of our scripts against *textbook* implementations, in one process, same shapes and thread count.

The textbook yardstick is written the way reference implementations (the TD3+BC authors' code, CORL) do it:
two separate critic modules with two separate `torch.optim.Adam` optimizers (PyTorch's default implementation),
a Python loop over parameters for the soft update, a loss `.item()` every step, and batches sampled with NumPy
indices and copied into fresh tensors. Its TD3 update is the same with the BC term dropped.

Ours are the `update` functions of the scripts, and online steps that mirror each script's loop body line for
line (act, env step, store, sample, update; balanced replay adds its tree and density-ratio estimator, and runs
with an ensemble of 1 and of 5 agents, its default). Every
rate is the median of alternating timing rounds after a warm-up. Also measured: loading a 1M-transition Minari
dataset (built here, synthetic, Hopper shapes) into the replay table, evaluating 10 episodes one at a time
versus batched, and peak memory with 1M offline + 250k online transitions (each in a fresh subprocess).

    python scripts/bench_speed.py --threads 2 --eval-checkpoint CHECKPOINT --json-out benchmarks/speed/cpu_2threads.json
"""
from __future__ import annotations

import copy
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "algorithms"))
import balanced_replay  # noqa: E402
import conservative_ft  # noqa: E402
import naive_ft  # noqa: E402
import offline_data  # noqa: E402
import td3_bc  # noqa: E402

SYNTHETIC_ID = "bench/hopper/synthetic-v0"


@dataclass
class Args:
    threads: int = 2
    """torch intra-op threads for every measurement"""
    batch_size: int = 256
    """transitions per update"""
    dataset_size: int = 1_000_000
    """offline rows every implementation samples from (and transitions of the synthetic Minari dataset)"""
    online_size: int = 250_000
    """online rows in the replay for the memory probe"""
    rounds: int = 21
    """alternating timing rounds per implementation; the median is reported"""
    round_updates: int = 50
    """updates (or online steps) per timing round"""
    warmup: int = 50
    """untimed updates before timing"""
    eval_episodes: int = 10
    """episodes of the evaluation timing"""
    eval_checkpoint: str | None = None
    """the evaluation timing's actor: a checkpoint.pt (long episodes); default an untrained actor (short ones)"""
    skip_io: bool = False
    """skip the dataset-load, evaluation and memory measurements (update and step rates only)"""
    json_out: str | None = None
    """also write the results to this JSON file"""
    memory_probe: str | None = None
    """internal: run one peak-memory probe (`table` or `balanced`) on --probe-dataset and print its ru_maxrss"""
    probe_dataset: str = SYNTHETIC_ID
    """internal: dataset id of the memory probe"""


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


class TextbookReplay:
    """The reference replay buffer: NumPy arrays, a write pointer, NumPy indices, fresh float tensors per batch."""

    def __init__(self, arrays, capacity):
        n = len(arrays[0])
        self.s, self.a, self.r, self.s2, self.not_done = (np.zeros((n + capacity, x.shape[1]), np.float32)
                                                          for x in arrays)
        for buf, x in zip((self.s, self.a, self.r, self.s2, self.not_done), arrays):
            buf[:n] = x
        self.size = n

    def add(self, s, a, s2, r, done):
        self.s[self.size], self.a[self.size], self.s2[self.size] = s, a, s2
        self.r[self.size], self.not_done[self.size] = r, 1.0 - done
        self.size += 1

    def sample(self, batch_size):
        ind = np.random.randint(0, self.size, size=batch_size)
        return tuple(torch.FloatTensor(x[ind]) for x in (self.s, self.a, self.r, self.s2, self.not_done))


def textbook_online_step(book, replay, env, obs_mean, obs_std, batch_size):
    """The textbook TD3 online step: select_action on one state, Gaussian noise in NumPy, env step, add, train."""
    state = [(env.reset(seed=0)[0] - obs_mean) / obs_std]

    def step():
        s = state[0]
        a = book.actor(torch.FloatTensor(s.reshape(1, -1))).cpu().data.numpy().flatten()
        a = (a + np.random.normal(0, 0.1, size=a.shape)).clip(-1, 1)
        next_obs, r, terminated, truncated, _ = env.step(a)
        s2 = (next_obs - obs_mean) / obs_std
        replay.add(s, a, s2, r, float(terminated))
        state[0] = (env.reset()[0] - obs_mean) / obs_std if terminated or truncated else s2
        book.train(*replay.sample(batch_size))
    return step


# ------------------------------------------------------------------ ours, as the scripts run them
def networks(module, obs_dim, act_dim, max_action, n=1):
    if module is balanced_replay:  # an ensemble of n agents: n actors, 2n critics
        actor, critic = module.EnsembleActor(obs_dim, act_dim, max_action, n=n), module.Critic(obs_dim, act_dim, n=2 * n)
    else:
        actor, critic = module.Actor(obs_dim, act_dim, max_action), module.Critic(obs_dim, act_dim)
    actor_target, critic_target = copy.deepcopy(actor).requires_grad_(False), copy.deepcopy(critic).requires_grad_(False)
    actor_opt = torch.optim.Adam(actor.parameters(), lr=3e-4, fused=True)
    critic_opt = torch.optim.Adam(critic.parameters(), lr=3e-4, fused=True)
    return actor, actor_target, critic, critic_target, actor_opt, critic_opt


def ours_offline_update(table, split, batch_size):
    """td3_bc.py's offline loop body: one gather from the replay table, one update."""
    obs_dim, act_dim = split[0], split[1]
    nets = networks(td3_bc, obs_dim, act_dim, torch.ones(act_dim))
    args, n_off, count = td3_bc.Args(), table.shape[0], [0]

    def step():
        count[0] += 1
        idx = td3_bc.replay_indices(n_off, 0, batch_size, args.offline_ratio, table.device)
        td3_bc.update(count[0], table[idx].split(split, dim=1), *nets, args)
    return step


def ours_online_step(module, table, n_off, split, env, obs_mean, obs_std, batch_size, ensemble=5):
    """One online step of naive_ft.py / conservative_ft.py / balanced_replay.py (an ensemble of `ensemble` agents),
    mirroring its loop body."""
    obs_dim, act_dim = split[0], split[1]
    device, max_action = table.device, torch.ones(act_dim)
    to_dev = lambda x: torch.as_tensor(x, dtype=torch.float32, device=device)  # noqa: E731
    actor, actor_target, critic, critic_target, actor_opt, critic_opt = networks(module, obs_dim, act_dim, max_action,
                                                                                 ensemble)
    pretrained_actor = copy.deepcopy(actor).requires_grad_(False)
    args = module.Args()
    balanced = module is balanced_replay
    if balanced:
        tree = balanced_replay.SumTree(table.shape[0], device)
        tree.update(torch.arange(n_off, device=device), torch.ones(n_off, device=device))
        max_priority = [torch.tensor(balanced_replay.initial_max_priority(n_off, 0.5, 1000), dtype=torch.float64)]
        weight_net = balanced_replay.DensityRatio(obs_dim, act_dim)
        weight_opt = torch.optim.Adam(weight_net.parameters(), lr=args.ratio_lr, fused=True)
    st = {"n_on": 1000, "step": 0, "obs_t": to_dev((env.reset(seed=0)[0] - obs_mean) / obs_std)}
    table[n_off:n_off + 1000] = table[:1000]  # some online rows already, as after the first episodes

    def step():
        st["step"] += 1
        with torch.no_grad():
            a = actor(st["obs_t"])
            a = (a + torch.randn_like(a) * args.expl_noise * max_action).clamp(-max_action, max_action)
        next_obs, reward, terminated, truncated, _ = env.step(a.cpu().numpy())
        r_s2_term = to_dev(np.concatenate([[reward], (next_obs - obs_mean) / obs_std, [terminated]]))
        next_t, row = r_s2_term[1:-1], n_off + st["n_on"]
        table[row] = torch.cat([st["obs_t"], a, r_s2_term])
        st["n_on"] += 1
        st["obs_t"] = to_dev((env.reset()[0] - obs_mean) / obs_std) if terminated or truncated else next_t
        if balanced:
            tree.update(torch.tensor([row], device=device), max_priority[0][None])
            idx = tree.sample(batch_size)
            batch = table[idx].split(split, dim=1)
            info = balanced_replay.update(st["step"], batch, actor, actor_target, critic, critic_target, actor_opt,
                                          critic_opt, args, offline=False)
            off = table[torch.randint(n_off, (args.ratio_batch_size,), device=device)].split(split, dim=1)
            on = table[n_off + torch.randint(st["n_on"], (args.ratio_batch_size,), device=device)].split(split, dim=1)
            priority, stats = balanced_replay.update_ratio_and_priorities(weight_net, weight_opt, tree, idx, batch,
                                                                          off, on, args)
            max_priority[0] = torch.maximum(max_priority[0], priority.max().to(torch.float64))
            info.update(stats, online_share=(idx >= n_off).float().mean())
            return
        idx = module.replay_indices(n_off, st["n_on"], batch_size, args.offline_ratio, device)
        extra = {"beta": conservative_ft.beta_schedule(st["step"], args), "anchor": pretrained_actor} \
            if module is conservative_ft else {}
        module.update(st["step"], table[idx].split(split, dim=1), actor, actor_target, critic, critic_target,
                      actor_opt, critic_opt, args, offline=False, **extra)
    return step


def gemm_floor(obs_dim: int, act_dim: int, batch: int, hidden: int = 256):
    """Only the matrix products of one TD3+BC update, same shapes, back to back (the actor step's products count
    once every policy_freq = 2 updates): no update can take less time on this CPU with these kernels."""
    B, H, n = batch, hidden, 2
    r = lambda *shape: torch.randn(*shape)  # noqa: E731
    critic_fwd = [(r(n, B, obs_dim + act_dim), r(n, obs_dim + act_dim, H)), (r(n, B, H), r(n, H, H)), (r(n, B, H), r(n, H, 1))]
    critic_bwd = [(r(n, H, B), r(n, B, 1)), (r(n, B, 1), r(n, 1, H)), (r(n, H, B), r(n, B, H)), (r(n, B, H), r(n, H, H)),
                  (r(n, obs_dim + act_dim, B), r(n, B, H))]  # weight and input gradients (no input grad at layer 1)
    actor_fwd = [(r(1, B, obs_dim), r(1, obs_dim, H)), (r(1, B, H), r(1, H, H)), (r(1, B, H), r(1, H, act_dim))]
    actor_bwd = [(r(1, H, B), r(1, B, act_dim)), (r(1, B, act_dim), r(1, act_dim, H)), (r(1, H, B), r(1, B, H)),
                 (r(1, B, H), r(1, H, H)), (r(1, obs_dim, B), r(1, B, H))]
    q1_fwd = [(x[:1], w[:1]) for x, w in critic_fwd]
    q1_bwd = [(r(1, B, 1), r(1, 1, H)), (r(1, B, H), r(1, H, H)), (r(1, B, H), r(1, H, obs_dim + act_dim))]  # inputs only
    every = actor_fwd + critic_fwd + critic_fwd + critic_bwd  # target actor + target critics, critics fwd + bwd
    every_other = actor_fwd + q1_fwd + q1_bwd + actor_bwd  # the delayed actor step
    count = [0]

    def step():
        count[0] += 1
        for x, w in every + (every_other if count[0] % 2 == 0 else []):
            torch.bmm(x, w)
    return step


def time_rounds(fns: dict, rounds: int, n: int, warmup: int) -> dict:
    """Calls/s of each fn in each of `rounds` alternating rounds of `n` calls (lists, one rate per round)."""
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
    return rates


def median_ratio(a: list, b: list) -> float:
    """Median over rounds of a's rate / b's rate: a machine that speeds up or slows down between rounds (a shared
    VM does) moves both rates of a round together, so per-round ratios are steadier than a ratio of medians."""
    return float(np.median(np.array(a) / np.array(b)))


# ------------------------------------------------------------------ dataset load, evaluation, memory
def build_synthetic_dataset(n_transitions: int) -> None:
    """A Minari dataset of n_transitions / 1000 episodes of 1000 Hopper-shaped steps (random numbers)."""
    import minari
    from minari.data_collector import EpisodeBuffer

    rng, T = np.random.default_rng(0), 1000
    buffers = [EpisodeBuffer(id=i, seed=i, observations=rng.standard_normal((T + 1, 11)),
                             actions=rng.uniform(-1, 1, (T, 3)).astype(np.float32), rewards=list(rng.standard_normal(T)),
                             terminations=[False] * T, truncations=[False] * (T - 1) + [True])
               for i in range(n_transitions // T)]
    minari.create_dataset_from_buffers(SYNTHETIC_ID, buffers, env="Hopper-v5", eval_env="Hopper-v5",
                                       algorithm_name="synthetic", author="bench", author_email="none",
                                       description="speed benchmark data", code_permalink="none")


def load_into_table(dataset_id: str, online_rows: int):
    """What every script does before training: load_dataset, then the normalized replay table."""
    data = offline_data.load_dataset(dataset_id)
    obs_mean, obs_std = data.obs_mean_std()
    to_dev = lambda x: torch.as_tensor(x, dtype=torch.float32)  # noqa: E731
    table = torch.empty(data.obs.shape[0] + online_rows, 2 * data.obs.shape[1] + data.actions.shape[1] + 2)
    table[:data.obs.shape[0]] = torch.cat([to_dev((data.obs - obs_mean) / obs_std), to_dev(data.actions),
                                           to_dev(data.rewards[:, None]), to_dev((data.next_obs - obs_mean) / obs_std),
                                           to_dev(data.terminated[:, None])], 1)
    return data, table


def memory_probe(kind: str, dataset_id: str, online_rows: int, batch_size: int) -> None:
    """Peak resident memory of a script's state: the table with every online row written, networks, optimizers,
    100 updates, plus (balanced) the sum tree and density-ratio network with its updates."""
    data, table = load_into_table(dataset_id, online_rows)
    n_off, split = data.obs.shape[0], [11, 3, 1, 11, 1]
    del data
    peak_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    table[n_off:] = table[:online_rows]  # every online row written (untouched memory is not resident)
    module = balanced_replay if kind == "balanced" else naive_ft
    env = gym.make("Hopper-v5")
    step = ours_online_step(module, table, n_off, split, env, np.zeros(11), np.ones(11), batch_size)
    for _ in range(100):
        step()
    with open("/proc/self/status") as f:  # resident memory now, in training (Linux)
        rss_now = next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))
    print(json.dumps({"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "peak_rss_during_load_mib": peak_load, "rss_training_mib": rss_now}))


def evaluate_one_at_a_time(actor, env, obs_mean, obs_std, seed: int, episodes: int):
    """The evaluation loop reference scripts have (and ours had): one episode after the other, one actor call on
    one state per step; same per-episode seeds as the scripts' batched `evaluate`. Returns (returns, lengths)."""
    returns, lengths = [], []
    for i in range(episodes):
        obs, _ = env.reset(seed=int(np.random.SeedSequence([seed, i]).generate_state(1)[0]))
        done, ret, n = False, 0.0, 0
        while not done:
            with torch.no_grad():
                a = actor(torch.as_tensor((obs - obs_mean) / obs_std, dtype=torch.float32)).numpy()
            obs, r, terminated, truncated, _ = env.step(a)
            done, ret, n = terminated or truncated, ret + float(r), n + 1
        returns.append(ret)
        lengths.append(n)
    return np.array(returns), np.array(lengths)


def eval_rates(n_episodes: int, checkpoint: str | None) -> dict:
    """n episodes of one actor on Hopper-v5: one at a time (the loop reference scripts have) vs batched (ours)."""
    torch.manual_seed(0)
    actor, mean, std = td3_bc.Actor(11, 3, torch.ones(3)), np.zeros(11), np.ones(11)
    if checkpoint:
        ckpt = td3_bc.load_checkpoint(checkpoint, None)
        actor.load_state_dict(ckpt["actor"])
        mean, std = ckpt["obs_mean"], ckpt["obs_std"]
    envs, env = [gym.make("Hopper-v5") for _ in range(n_episodes)], gym.make("Hopper-v5")
    t = time.perf_counter()
    batched = td3_bc.evaluate(actor, envs, mean, std, seed=0, device="cpu")
    t_batched = time.perf_counter() - t
    t = time.perf_counter()
    sequential, lengths = evaluate_one_at_a_time(actor, env, mean, std, seed=0, episodes=n_episodes)
    t_seq = time.perf_counter() - t
    return {"episodes": n_episodes, "env_steps": int(lengths.sum()), "actor": checkpoint or "untrained",
            "one_at_a_time_s": t_seq, "batched_s": t_batched, "mean_return_one_at_a_time": float(sequential.mean()),
            "mean_return_batched": float(batched.mean())}


if __name__ == "__main__":
    args = tyro.cli(Args)
    torch.set_num_threads(args.threads)
    if args.memory_probe:
        memory_probe(args.memory_probe, args.probe_dataset, args.online_size, args.batch_size)
        sys.exit(0)
    torch.manual_seed(0)
    np.random.seed(0)
    o, a, n, B = 11, 3, args.dataset_size, args.batch_size
    split = [o, a, 1, o, 1]
    rng = np.random.default_rng(0)
    arrays = (rng.standard_normal((n, o), dtype=np.float32), rng.uniform(-1, 1, (n, a)).astype(np.float32),
              rng.standard_normal((n, 1), dtype=np.float32), rng.standard_normal((n, o), dtype=np.float32),
              np.ones((n, 1), np.float32))
    table = torch.cat([torch.from_numpy(x) for x in arrays[:4]] + [1 - torch.from_numpy(arrays[4])], 1)
    zeros, ones = np.zeros(o), np.ones(o)
    results = {"torch": torch.__version__, "threads": torch.get_num_threads(), "args": vars(args)}

    # 1-2: updates on offline data
    book_bc, book_td3 = TextbookTD3BC(o, a), TextbookTD3BC(o, a, bc=False)
    replay_bc, replay_td3 = TextbookReplay(arrays, 0), TextbookReplay(arrays, 0)
    updates = time_rounds({"textbook TD3+BC update": lambda: book_bc.train(*replay_bc.sample(B)),
                           "textbook TD3 update": lambda: book_td3.train(*replay_td3.sample(B)),
                           "ours: td3_bc.py update": ours_offline_update(table, split, B),
                           "matrix products alone (floor)": gemm_floor(o, a, B)},
                          args.rounds, args.round_updates, args.warmup)
    # 3-5: online steps (act, env step, store, sample, update), each with its own Hopper-v5
    n_steps = args.warmup + args.rounds * args.round_updates + 10
    online_table = lambda: torch.cat([table, torch.empty(1000 + n_steps, table.shape[1])])  # noqa: E731
    steps = time_rounds({
        "textbook TD3 step (+ env step)": textbook_online_step(TextbookTD3BC(o, a, bc=False),
                                                               TextbookReplay(arrays, 1000 + n_steps),
                                                               gym.make("Hopper-v5"), zeros, ones, B),
        "ours: naive_ft.py step": ours_online_step(naive_ft, online_table(), n, split, gym.make("Hopper-v5"),
                                                   zeros, ones, B),
        "ours: conservative_ft.py step": ours_online_step(conservative_ft, online_table(), n, split,
                                                          gym.make("Hopper-v5"), zeros, ones, B),
        "ours: balanced_replay.py step, N=1": ours_online_step(balanced_replay, online_table(), n, split,
                                                               gym.make("Hopper-v5"), zeros, ones, B, ensemble=1),
        "ours: balanced_replay.py step, N=5": ours_online_step(balanced_replay, online_table(), n, split,
                                                               gym.make("Hopper-v5"), zeros, ones, B, ensemble=5)},
        args.rounds, args.round_updates, args.warmup)
    results.update(updates_per_s=updates, steps_per_s=steps)

    if not args.skip_io:
        with tempfile.TemporaryDirectory() as root:
            os.environ["MINARI_DATASETS_PATH"] = root
            t = time.perf_counter()
            build_synthetic_dataset(n)
            t_build = time.perf_counter() - t
            t = time.perf_counter()
            data, _ = load_into_table(SYNTHETIC_ID, 0)
            results["dataset"] = {"transitions": int(data.obs.shape[0]), "build_s": t_build,
                                  "load_into_table_s": time.perf_counter() - t}
            del data
            memory = {}
            for kind in ("table", "balanced"):
                out = subprocess.run([sys.executable, __file__, "--threads", str(args.threads), "--memory-probe", kind,
                                      "--online-size", str(args.online_size)], capture_output=True, text=True,
                                     check=True, env=dict(os.environ))
                memory[kind] = json.loads(out.stdout.strip().splitlines()[-1])
            results["memory_mib"] = {"td3_bc/naive_ft/conservative_ft": memory["table"],
                                     "balanced_replay (+ sum tree, estimator)": memory["balanced"]}
        results["evaluation"] = eval_rates(args.eval_episodes, args.eval_checkpoint)

    # ------------------------------------------------------------------ report
    base, td3 = updates["textbook TD3+BC update"], steps["textbook TD3 step (+ env step)"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {B}, Hopper shapes (obs {o}, act {a}), "
          f"{args.rounds} rounds x {args.round_updates}; rates: median round; ratios: median of per-round ratios\n")
    print("| measurement | per second | vs yardstick |\n|---|---|---|")
    results["ratios"] = {}
    for k, v in updates.items():
        results["ratios"][k] = median_ratio(v, base)
        print(f"| {k} | {np.median(v):.0f} | {results['ratios'][k]:.2f}x textbook TD3+BC update |")
    for k, v in steps.items():
        results["ratios"][k] = median_ratio(v, td3)
        print(f"| {k} | {np.median(v):.0f} | {results['ratios'][k]:.2f}x textbook TD3 step |")
    overhead = median_ratio(steps["ours: naive_ft.py step"], steps["ours: balanced_replay.py step, N=1"]) - 1
    ensemble = median_ratio(steps["ours: balanced_replay.py step, N=1"], steps["ours: balanced_replay.py step, N=5"])
    print(f"\nbalanced replay's extra machinery: +{100 * overhead:.0f}% time per step over naive_ft.py (N=1); "
          f"its Q-ensemble of 5: {ensemble:.2f}x the time per step of N=1")
    results["balanced_overhead"], results["ensemble_cost"] = overhead, ensemble
    if "dataset" in results:
        d, e = results["dataset"], results["evaluation"]
        print(f"dataset: {d['transitions']:,} transitions loaded into the replay table in {d['load_into_table_s']:.1f} s "
              f"(built in {d['build_s']:.1f} s)")
        print(f"evaluation of {e['episodes']} episodes ({e['env_steps']} env steps): one at a time "
              f"{e['one_at_a_time_s']:.2f} s, batched {e['batched_s']:.2f} s; mean return {e['mean_return_one_at_a_time']:.2f} "
              f"vs {e['mean_return_batched']:.2f}")
        for k, v in results["memory_mib"].items():
            print(f"memory, {args.dataset_size:,} offline + {args.online_size:,} online rows, {k}: peak {v['peak_rss_mib']:.0f} "
                  f"MiB (reached while loading: {v['peak_rss_during_load_mib']:.0f} MiB), resident in training "
                  f"{v['rss_training_mib']:.0f} MiB")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(results, f, indent=2)
