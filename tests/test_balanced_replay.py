"""Balanced replay: the torch sum tree, the density-ratio estimator, initial priorities, the priority update,
and the script through its CLI (smoke, determinism, handoff, errors)."""
import copy
import json
import math
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, read_metrics, run_script

import balanced_replay as br
import td3_bc

ONLINE = ["--online-steps", "200", "--warmup-online-steps", "50", "--warmup-updates", "100", "--eval-every", "100",
          "--log-every", "50", "--eval-episodes", "2", "--batch-size", "64", "--ratio-batch-size", "32"]


def check_sums(tree: br.SumTree):
    """Every node is the sum of its children; the top level is a single group of `fanout` nodes."""
    assert tree.levels[-1].numel() == tree.fanout
    for below, level in zip(tree.levels, tree.levels[1:]):
        assert below.numel() % tree.fanout == 0 and below.numel() // tree.fanout <= level.numel()
        torch.testing.assert_close(level[: below.numel() // tree.fanout], below.view(-1, tree.fanout).sum(1))
        assert torch.all(level[below.numel() // tree.fanout:] == 0)  # padding nodes hold no mass


@pytest.mark.parametrize("fanout", [2, 3, 64])
def test_sum_tree_frequencies_match_priorities(fanout):
    torch.manual_seed(0)
    p = torch.tensor([1.0, 2.0, 3.0, 0.0, 4.0, 0.5, 10.0, 1.0, 0.0, 2.5, 7.0, 0.25, 3.0])
    tree = br.SumTree(len(p), "cpu", fanout=fanout)
    tree.update(torch.arange(len(p)), p)
    n_batches, batch = 400, 256
    counts = torch.zeros(len(p))
    for _ in range(n_batches):
        idx = tree.sample(batch)
        counts += torch.bincount(idx, minlength=tree.levels[0].numel())[: len(p)].float()
    n = n_batches * batch
    assert counts.sum() == n  # every sample is a real leaf
    expected = p / p.sum() * n
    # binomial std per leaf; stratification only lowers the variance, so 5 std is a safe bound
    tol = 5 * torch.sqrt(n * (p / p.sum()) * (1 - p / p.sum())) + 1
    assert torch.all((counts - expected).abs() <= tol), (counts, expected)
    assert counts[3] == 0 and counts[8] == 0  # zero priority: never sampled


def test_sum_tree_samples_are_the_inverse_cdf():
    """The tree returns exactly the leaves an inverse-CDF lookup (searchsorted over the cumulative priorities)
    returns for the same stratified points u: the wide tree is only a faster way to find them."""
    for capacity, fanout in ((100_000, 64), (5000, 4)):
        torch.manual_seed(2)
        p = torch.rand(capacity) * (torch.rand(capacity) > 0.2)  # with zero-priority leaves
        tree = br.SumTree(capacity, "cpu", fanout=fanout)
        tree.update(torch.arange(capacity), p)
        torch.manual_seed(3)
        idx = tree.sample(256)
        torch.manual_seed(3)
        u = (torch.arange(256) + torch.rand(256, dtype=torch.float64)) * (p.double().sum() / 256)
        assert torch.equal(idx, torch.searchsorted(p.double().cumsum(0), u, right=True))


def test_sum_tree_totals_stay_consistent():
    torch.manual_seed(1)
    tree = br.SumTree(1000, "cpu", fanout=4)
    tree.update(torch.arange(1000), torch.rand(1000))
    for _ in range(50):
        idx = torch.randint(1000, (64,))  # with duplicates, as a sampled batch has
        vals = torch.rand(64)
        vals = vals[torch.unique(idx, return_inverse=True)[1]]  # equal values for equal indices
        tree.update(idx, vals)
    check_sums(tree)
    assert float(tree.total()) == pytest.approx(float(tree.levels[0].sum()), rel=1e-12)


@pytest.mark.parametrize("capacity, hot, fanout", [(5, 0, 64), (5, 4, 64), (1000, 999, 64), (1000, 0, 64), (2, 1, 64),
                                                   (1000, 999, 2), (1000, 0, 3), (4097, 4096, 64)])
def test_sum_tree_edges(capacity, hot, fanout):
    """All the mass on the first or the last leaf (with empty padding leaves after it): every sample is it."""
    torch.manual_seed(0)
    tree = br.SumTree(capacity, "cpu", fanout=fanout)
    p = torch.zeros(capacity)
    p[hot] = 3.0
    tree.update(torch.arange(capacity), p)
    for b in (1, 7, 256):
        idx = tree.sample(b)
        assert idx.shape == (b,) and torch.all(idx == hot)


def test_stratified_sampling_covers_segments():
    """One sample per equal-mass segment: with uniform priorities over 256 leaves and batch 256, each leaf once."""
    torch.manual_seed(0)
    tree = br.SumTree(256, "cpu")
    tree.update(torch.arange(256), torch.ones(256))
    assert torch.equal(tree.sample(256).sort().values, torch.arange(256))


def test_initial_priority_mass_fraction():
    for m, f in ((5000, 0.5), (200_000, 0.2), (1234, 0.9)):
        tree = br.SumTree(m + 2000, "cpu")
        tree.update(torch.arange(m), torch.ones(m))
        max0 = br.initial_max_priority(m, f, 1000)
        tree.update(torch.arange(m, m + 1000), torch.full((1000,), max0))
        online_mass = float(tree.levels[0][m: m + 1000].sum())
        assert online_mass / float(tree.total()) == pytest.approx(f, rel=1e-9)


def test_density_ratio_detects_shift():
    """Offline (s, a) ~ N(0, I), online ~ N(1.5, I): after training, w is larger on online-like samples."""
    torch.manual_seed(0)
    net = br.DensityRatio(4, 2, hidden=64)
    assert float(net(torch.zeros(10, 4), torch.zeros(10, 2)).mean().detach()) == pytest.approx(1.0, abs=0.3)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(300):
        off, on = torch.randn(256, 6), torch.randn(256, 6) + 1.5
        loss = br.density_ratio_loss(net(off[:, :4], off[:, 4:]), net(on[:, :4], on[:, 4:]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    off, on = torch.randn(2000, 6), torch.randn(2000, 6) + 1.5
    with torch.no_grad():
        w_off, w_on = net(off[:, :4], off[:, 4:]).mean(), net(on[:, :4], on[:, 4:]).mean()
    assert w_on > 3 * w_off, (w_on, w_off)


def test_priorities_use_the_estimator_before_its_update():
    torch.manual_seed(0)
    net = br.DensityRatio(3, 2, hidden=16)
    before = copy.deepcopy(net)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    tree = br.SumTree(100, "cpu")
    tree.update(torch.arange(100), torch.ones(100))
    args = br.Args(temperature=5.0)
    rl = (torch.randn(8, 3), torch.randn(8, 2))
    off, on = (torch.randn(16, 3), torch.randn(16, 2)), (torch.randn(16, 3) + 1, torch.randn(16, 2))
    idx = torch.arange(10, 18)
    priority, stats = br.update_ratio_and_priorities(net, opt, tree, idx, rl, off, on, args)
    with torch.no_grad():
        expected = (before(*rl) ** 0.2 / ((before(*off) ** 0.2).mean() + 1e-10)).clamp(1e-3, 1e3)
    torch.testing.assert_close(priority, expected)
    torch.testing.assert_close(tree.levels[0][idx].float(), expected)
    check_sums(tree)
    assert not torch.equal(net.net[0].weight, before.net[0].weight)  # and then the estimator did update
    assert set(stats) == {"ratio_loss", "w_offline", "w_online"}


def test_estimator_step_matches_separate_forwards():
    """The estimator runs one forward over the offline and online batches together (speed); the textbook form runs
    two. Same loss and gradients up to floating-point order: 1e-6 relative over 20 steps."""
    torch.manual_seed(0)
    net = br.DensityRatio(11, 3)
    ref = copy.deepcopy(net)
    opt, ref_opt = torch.optim.Adam(net.parameters(), lr=3e-4), torch.optim.Adam(ref.parameters(), lr=3e-4)
    tree, args = br.SumTree(1000, "cpu"), br.Args()
    for _ in range(20):
        rl, off, on = (torch.randn(256, 11), torch.rand(256, 3)), (torch.randn(256, 11), torch.rand(256, 3)), \
            (torch.randn(256, 11) + 0.5, torch.rand(256, 3))
        priority, stats = br.update_ratio_and_priorities(net, opt, tree, torch.arange(256), rl, off, on, args)
        loss = br.density_ratio_loss(ref(*off), ref(*on))
        ref_opt.zero_grad()
        loss.backward()
        ref_opt.step()
        assert float(stats["ratio_loss"]) == pytest.approx(loss.item(), rel=1e-6)
    torch.testing.assert_close(net.net[0].weight, ref.net[0].weight, rtol=1e-5, atol=1e-7)


def agents_and_ensemble(n_agents=2, obs_dim=5, act_dim=2, hidden=16, seed=0):
    """n td3_bc.py agents with Adam moments (one TD3+BC step each), and the ensemble stack_members makes of them."""
    torch.manual_seed(seed)
    max_action = torch.tensor([1.0, 0.5])
    agents = []
    for _ in range(n_agents):
        actor, critic = td3_bc.Actor(obs_dim, act_dim, max_action, hidden), td3_bc.Critic(obs_dim, act_dim, hidden)
        nets = (actor, copy.deepcopy(actor).requires_grad_(False), critic, copy.deepcopy(critic).requires_grad_(False),
                torch.optim.Adam(actor.parameters(), lr=1e-3), torch.optim.Adam(critic.parameters(), lr=1e-3))
        td3_bc.update(2, random_batch(8, obs_dim, act_dim), *nets, td3_bc.Args())
        agents.append(nets)
    parts = [br.agent_part({name: obj.state_dict() for name, obj in zip(
        ("actor", "actor_target", "critic", "critic_target", "actor_opt", "critic_opt"), nets)}) for nets in agents]
    return agents, ensemble(br.stack_members(parts), obs_dim, act_dim, hidden, max_action)


def ensemble(state, obs_dim, act_dim, hidden, max_action):
    """An ensemble's networks and Adams (as the script builds them), loaded from a stack_members state."""
    n = state["n"]
    actor, critic = br.EnsembleActor(obs_dim, act_dim, max_action, hidden, n), br.Critic(obs_dim, act_dim, hidden, 2 * n)
    nets = (actor, copy.deepcopy(actor).requires_grad_(False), critic, copy.deepcopy(critic).requires_grad_(False),
            torch.optim.Adam(actor.parameters(), lr=1e-3), torch.optim.Adam(critic.parameters(), lr=1e-3))
    for name, obj in zip(("actor", "actor_target", "critic", "critic_target", "actor_opt", "critic_opt"), nets):
        obj.load_state_dict(state[name])
    return nets


def random_batch(b, obs_dim, act_dim, lead=()):
    return (torch.randn(*lead, b, obs_dim), torch.rand(*lead, b, act_dim) - 0.5, torch.randn(*lead, b, 1),
            torch.randn(*lead, b, obs_dim), (torch.rand(*lead, b, 1) < 0.2).float())


def test_ensemble_actor_acts_with_the_mean_of_its_members():
    """pi_i(s) = max_action * tanh(MLP_i(s)) with member i's own weights; the ensemble acts with mean_i pi_i(s), for
    one state, a batch of states, or one batch per member."""
    torch.manual_seed(0)
    max_action = torch.tensor([2.0, 1.0])
    actor = br.EnsembleActor(3, 2, max_action, hidden=4, n=3)
    obs = torch.randn(5, 3)

    def member(i, x):
        for j, layer in enumerate(actor.layers):
            x = x @ layer.weight[i] + layer.bias[i, 0]
            x = torch.relu(x) if j < 2 else x
        return max_action * torch.tanh(x)
    expected = torch.stack([member(i, obs) for i in range(3)])
    torch.testing.assert_close(actor.members(obs), expected)
    torch.testing.assert_close(actor(obs), expected.mean(0))
    torch.testing.assert_close(actor(obs[2]), expected.mean(0)[2])
    per_member = torch.randn(3, 5, 3)
    torch.testing.assert_close(actor.members(per_member), torch.stack([member(i, per_member[i]) for i in range(3)]))
    assert not torch.allclose(expected[0], expected[1])  # the members differ


def test_agents_become_members_unchanged():
    """agent_part + stack_members: member i acts as agent i, its twins are critics i and N + i, and its Adam
    moments are agent i's (transposed like the weights)."""
    agents, (actor, _, critic, _, actor_opt, critic_opt) = agents_and_ensemble(3)
    obs, act = torch.randn(7, 5), torch.rand(7, 2) - 0.5
    with torch.no_grad():
        for i, (a_actor, _, a_critic, _, a_actor_opt, a_critic_opt) in enumerate(agents):
            torch.testing.assert_close(actor.members(obs)[i], a_actor(obs))
            q = critic(obs, act)
            torch.testing.assert_close(torch.stack([q[i], q[3 + i]]), a_critic(obs, act))
            first = a_actor_opt.state[a_actor.net[0].weight]
            torch.testing.assert_close(actor_opt.state[actor.layers[0].weight]["exp_avg"][i], first["exp_avg"].T)
            w = a_critic.layers[1].weight
            torch.testing.assert_close(critic_opt.state[critic.layers[1].weight]["exp_avg_sq"][[i, 3 + i]],
                                       a_critic_opt.state[w]["exp_avg_sq"])


def test_offline_update_trains_each_member_as_td3_bc():
    """Offline, every member trains on its own batch exactly as td3_bc.py trains one agent on it (no smoothing
    noise, so both draw nothing at random): same weights after two steps, up to float rounding."""
    agents, nets = agents_and_ensemble(2)
    args = br.Args(policy_noise=0.0)
    batches = [random_batch(16, 5, 2) for _ in range(2)]
    for step in (3, 4):  # a critic-only step, then critic + actor + targets
        br.update(step, [torch.stack(x) for x in zip(*batches)], *nets, args, offline=True)
        for agent, batch in zip(agents, batches):
            td3_bc.update(step, batch, *agent, td3_bc.Args(policy_noise=0.0))
    for i, (a_actor, a_actor_target, a_critic, _, _, _) in enumerate(agents):
        obs, act = torch.randn(7, 5), torch.rand(7, 2) - 0.5
        with torch.no_grad():
            torch.testing.assert_close(nets[0].members(obs)[i], a_actor(obs), rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(nets[1].members(obs)[i], a_actor_target(obs), rtol=1e-5, atol=1e-6)
            q = nets[2](obs, act)
            torch.testing.assert_close(torch.stack([q[i], q[2 + i]]), a_critic(obs, act), rtol=1e-5, atol=1e-6)


def test_online_update_objective_on_known_weights():
    """Online: y_i = r + gamma (1 - d) min(Q'_i1, Q'_i2)(s', mean_j pi'_j(s')); the critic loss is
    sum_i MSE(Q_i1, y_i) + MSE(Q_i2, y_i); the actor maximizes mean_i min(Q_i1, Q_i2)(s, mean_j pi_j(s))."""
    _, nets = agents_and_ensemble(3)
    actor, actor_target, critic, critic_target, _, _ = nets
    args = br.Args(policy_noise=0.0)
    obs, act, rew, next_obs, term = batch = random_batch(16, 5, 2)
    with torch.no_grad():
        a_next = actor_target.members(next_obs).mean(0)
        q_next = critic_target(next_obs, a_next)  # (6, B): member i's twins at rows i and 3 + i
        y = rew.squeeze(-1) + args.gamma * (1 - term.squeeze(-1)) * torch.minimum(q_next[:3], q_next[3:])
        q = critic(obs, act)
        critic_loss = sum(((q[i] - y[i % 3]) ** 2).mean() for i in range(6))
        actor_before = copy.deepcopy(actor)
    info = br.update(2, batch, *nets, args, offline=False)
    torch.testing.assert_close(info["critic_loss"] * 3, critic_loss)
    with torch.no_grad():  # the actor step follows the critic step: the updated critic, the actor before its step
        q_pi = critic(obs, actor_before(obs))
        objective = torch.minimum(q_pi[:3], q_pi[3:]).mean()
    torch.testing.assert_close(info["actor_loss"], -objective)
    assert not torch.equal(actor.layers[0].weight, actor_before.layers[0].weight)


def test_density_ratio_init_as_the_authors():
    """rlkit's init: hidden weights within 1/sqrt(OUTPUT width) (not the input width 1/sqrt(14) here), zero hidden
    biases, last weights within 3e-3, last bias 1: w(s, a) starts near 1."""
    torch.manual_seed(0)
    net = br.DensityRatio(11, 3, hidden=256).requires_grad_(False)
    for layer in (net.net[0], net.net[2]):
        assert 0.9 / 16 < float(layer.weight.abs().max()) <= 1 / 16 and torch.all(layer.bias == 0)
    assert float(net.net[4].weight.abs().max()) <= 3e-3 and float(net.net[4].bias) == 1.0
    w = net(torch.randn(1000, 11), torch.rand(1000, 3) * 2 - 1)
    assert float((w - 1).abs().max()) < 0.05, float((w - 1).abs().max())


@pytest.fixture(scope="module")
def br_runs(pretrained):
    """Ensembles of 2: member 0 from the pretrained agent, member 1 pretrained in the run (100 steps)."""
    ckpt = str(pretrained / "offline" / "checkpoint.pt")
    for name, seed in (("br_a", 0), ("br_b", 0), ("br_c", 1)):
        run_script("balanced_replay.py", "--checkpoint", ckpt, "--ensemble-size", "2", "--offline-steps", "100",
                   *ONLINE, "--seed", str(seed), "--runs-dir", str(pretrained), "--run-name", name)
    return pretrained


def test_cli_outputs_and_update_count(br_runs):
    rows = read_metrics(br_runs / "br_a" / "metrics.csv")
    assert [(r["phase"], int(r["step"])) for r in rows] == [("offline", 50), ("offline", 100)] + [
        ("online", s) for s in (0, 50, 100, 150, 200)]
    rows = rows[2:]
    # no update before 50 warm-up transitions; then 100 warm-up updates; then one per step
    assert [r["updates"] for r in rows] == ["", "100", "150", "200", "250"]
    for r in rows[1:]:
        for col in ("w_offline", "w_online", "online_share", "ratio_loss", "critic_loss", "pi_dist", "q_std"):
            assert math.isfinite(float(r[col])), col
        assert float(r["q_std"]) > 0  # two members disagree
    ckpt = torch.load(br_runs / "br_a" / "checkpoint.pt", weights_only=False)
    assert ckpt["algorithm"] == "balanced_replay" and "weight_net" in ckpt and ckpt["step"] == 200
    assert ckpt["ensemble_size"] == 2 and ckpt["actor"]["layers.0.weight"].shape[0] == 2
    assert ckpt["critic"]["layers.0.weight"].shape[0] == 4
    summary = json.loads((br_runs / "br_a" / "summary.json").read_text())
    assert summary["final_step"] == 200


def test_handoff_and_determinism(br_runs):
    """Member 0 starts online as the agent its --checkpoint holds, bit for bit; member 1 as pretrained in the run.
    Same seed, same run; another seed pretrains member 1 differently."""
    agent = torch.load(br_runs / "offline" / "checkpoint.pt", weights_only=False)
    a, b, c = (read_metrics(br_runs / n / "metrics.csv") for n in ("br_a", "br_b", "br_c"))
    assert a == b and a != c
    ca, cb, cc = (torch.load(br_runs / n / "checkpoint.pt", weights_only=False) for n in ("br_a", "br_b", "br_c"))
    for key in ("actor", "critic", "weight_net", "pretrained_actor"):
        for k in ca[key]:
            assert torch.equal(ca[key][k], cb[key][k]), (key, k)
    pi0 = br.agent_part(agent)["actor"]
    for k, v in pi0.items():
        if k != "max_action":
            assert torch.equal(ca["pretrained_actor"][k][:1], v) and torch.equal(cc["pretrained_actor"][k][:1], v)
    assert not torch.equal(ca["pretrained_actor"]["layers.0.weight"][1], cc["pretrained_actor"]["layers.0.weight"][1])
    info = json.loads((br_runs / "br_a" / "args.json").read_text())
    assert info["checkpoint_sha256"] == td3_bc.weights_sha256(agent) and info["members_sha256"] == [
        info["checkpoint_sha256"]]


def test_first_batch_online_share_is_the_initial_mass_fraction(pretrained, tmp_path):
    """The first update samples a tree whose online rows hold exactly f of the mass (--init-online-fraction), in
    one contiguous block after the offline rows: stratified sampling puts f*B +- 1 online rows in that batch.
    (An ensemble of 1 from --checkpoint: balanced replay alone, no offline phase.)"""
    proc = run_script("balanced_replay.py", "--checkpoint", str(pretrained / "offline" / "checkpoint.pt"),
                      "--ensemble-size", "1", "--online-steps", "60", "--warmup-online-steps", "50", "--warmup-updates",
                      "1", "--init-online-fraction", "0.3", "--log-every", "50", "--eval-every", "60",
                      "--eval-episodes", "1", "--batch-size", "64", "--runs-dir", str(tmp_path), "--run-name", "share")
    assert "ensemble of 1: 1 from --checkpoint, 0 pretrained here (no offline phase)" in proc.stdout
    rows = read_metrics(tmp_path / "share" / "metrics.csv")
    assert rows[0]["phase"] == "online" and float(rows[1]["q_std"]) == 0.0  # one member: no disagreement
    row = next(r for r in rows if r["step"] == "50")
    assert row["updates"] == "1"  # the row averages exactly the first update
    assert abs(float(row["online_share"]) - 0.3) <= 1 / 64 + 1e-9, row["online_share"]


@pytest.mark.parametrize("argv, message", [
    (["--temperature", "0"], "error: --temperature must be > 0, got 0.0"),
    (["--init-online-fraction", "1.0"], "error: --init-online-fraction must be in (0, 1), got 1.0"),
    (["--online-steps", "10", "--warmup-online-steps", "50"], "error: --online-steps 10 is less than"),
    (["--ensemble-size", "0"], "error: --ensemble-size must be > 0, got 0"),
    (["--ensemble-size", "1", "--checkpoint", "a.pt", "--checkpoint", "b.pt"],
     "error: 2 --checkpoint for an ensemble of --ensemble-size 1: one checkpoint per member at most"),
])
def test_bad_input(minari_root, tmp_path, argv, message):
    proc = run_script("balanced_replay.py", "--runs-dir", str(tmp_path), *argv, check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1 and lines[0].startswith(message), proc.stderr


def test_inconsistent_checkpoints(br_runs, tmp_path):
    """Members must share one dataset and one width; an ensemble is no member; untrained members are refused."""
    agent = br_runs / "offline" / "checkpoint.pt"
    ckpt = torch.load(agent, weights_only=False)
    for key, value, shown in (("hidden", 64, "--hidden 64"), ("dataset_id", "other/hopper/x-v0", "other/hopper/x-v0")):
        bad = copy.deepcopy(ckpt)
        bad["args"][key] = value
        bad.update({key: value} if key == "dataset_id" else {})
        torch.save(bad, tmp_path / f"{key}.pt")
        proc = run_script("balanced_replay.py", "--checkpoint", str(agent), "--checkpoint", str(tmp_path / f"{key}.pt"),
                          "--ensemble-size", "2", "--runs-dir", str(tmp_path / "r"), check=False)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode != 0 and len(lines) == 1 and lines[0].startswith(
            f"error: --checkpoint {tmp_path / f'{key}.pt'} (") and shown in lines[0], proc.stderr
    ensemble = br_runs / "br_a" / "checkpoint.pt"
    for script in ("balanced_replay.py", "naive_ft.py"):
        proc = run_script(script, "--checkpoint", str(ensemble), "--runs-dir", str(tmp_path / "r"), check=False)
        assert proc.returncode != 0 and proc.stderr.strip() == (
            f"error: {ensemble} holds an ensemble of 2 agents (balanced_replay.py); start from one agent: a "
            f"checkpoint of td3_bc.py, naive_ft.py or conservative_ft.py")
    proc = run_script("balanced_replay.py", "--checkpoint", str(agent), "--ensemble-size", "3", "--offline-steps", "0",
                      "--runs-dir", str(tmp_path / "r"), check=False)
    assert proc.returncode != 0 and proc.stderr.strip() == (
        "error: 2 of the 3 ensemble members have no --checkpoint, and --offline-steps 0 would finetune them untrained")
    assert not (tmp_path / "r").exists()


def test_probe_ensemble_shows_the_ensemble_as_it_starts_online(br_runs, tmp_path):
    """scripts/probe_ensemble.py on the last offline checkpoint of a run with --online-steps 0 stacks member 0 (from
    --checkpoint) and the member pretrained in the run exactly as the handoff does: the actors it probes are the
    online run's pi_0, bit for bit. Its numbers are those of the networks it loads; a single agent is refused."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import probe_ensemble

    run_script("balanced_replay.py", "--checkpoint", str(br_runs / "offline" / "checkpoint.pt"), "--ensemble-size",
               "2", "--offline-steps", "100", *ONLINE, "--online-steps", "0", "--seed", "0", "--runs-dir",
               str(tmp_path), "--run-name", "offline_only")
    offline = torch.load(tmp_path / "offline_only" / "checkpoint.pt", weights_only=False)
    online = torch.load(br_runs / "br_a" / "checkpoint.pt", weights_only=False)  # the same run, finetuned online
    assert offline["phase"] == "offline" and offline["actor"]["layers.0.weight"].shape[0] == 1  # member 1 only
    stacked = probe_ensemble.ensemble(offline)
    assert stacked["n"] == 2 and all(torch.equal(stacked["actor"][k], v) for k, v in online["pretrained_actor"].items())
    torch.manual_seed(0)
    obs, act = torch.randn(64, 11), torch.rand(64, 3) * 2 - 1
    r = probe_ensemble.probe(offline, obs, act)
    actor = br.EnsembleActor(11, 3, stacked["actor"]["max_action"], offline["args"]["hidden"], 2)
    critic = br.Critic(11, 3, offline["args"]["hidden"], 4)
    actor.load_state_dict(stacked["actor"])
    critic.load_state_dict(stacked["critic"])
    with torch.no_grad():
        q = critic(obs, actor(obs)).view(2, 2, -1).min(0).values
        q_own = critic(obs, actor.members(obs)[1]).view(2, 2, -1).min(0).values
    assert r["q_std"] == pytest.approx(float(q.std(0, correction=0).mean()), rel=1e-6) and r["q_std"] > 0
    assert r["q_cross"][1] == pytest.approx(q_own.mean(1).tolist(), rel=1e-6)  # actor 1 under critics 0 and 1
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "probe_ensemble.py"), str(tmp_path / "offline_only" /
                          "checkpoint.pt"), "--states", "100"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "offline step 100, 2 members, 100 offline states" in proc.stdout, proc.stderr
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "probe_ensemble.py"), str(br_runs / "offline" /
                          "checkpoint.pt")], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and proc.stderr.strip().endswith("is not a balanced_replay.py ensemble checkpoint")
