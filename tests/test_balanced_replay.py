"""Balanced replay: the torch sum tree, the density-ratio estimator, initial priorities, the priority update,
and the script through its CLI (smoke, determinism, handoff, errors)."""
import copy
import json
import math

import pytest
import torch
from conftest import read_metrics, run_script

import balanced_replay as br

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


@pytest.fixture(scope="module")
def br_runs(pretrained):
    ckpt = str(pretrained / "offline" / "checkpoint.pt")
    for name, seed in (("br_a", 0), ("br_b", 0), ("br_c", 1)):
        run_script("balanced_replay.py", "--checkpoint", ckpt, *ONLINE, "--seed", str(seed), "--runs-dir",
                   str(pretrained), "--run-name", name)
    return pretrained


def test_cli_outputs_and_update_count(br_runs):
    rows = read_metrics(br_runs / "br_a" / "metrics.csv")
    assert [int(r["step"]) for r in rows] == [0, 50, 100, 150, 200]
    # no update before 50 warm-up transitions; then 100 warm-up updates; then one per step
    assert [r["updates"] for r in rows] == ["", "100", "150", "200", "250"]
    for r in rows[1:]:
        for col in ("w_offline", "w_online", "online_share", "ratio_loss", "critic_loss", "pi_dist"):
            assert math.isfinite(float(r[col])), col
    ckpt = torch.load(br_runs / "br_a" / "checkpoint.pt", weights_only=False)
    assert ckpt["algorithm"] == "balanced_replay" and "weight_net" in ckpt and ckpt["step"] == 200
    summary = json.loads((br_runs / "br_a" / "summary.json").read_text())
    assert summary["final_step"] == 200


def test_handoff_and_determinism(br_runs):
    offline_last = read_metrics(br_runs / "offline" / "metrics.csv")[-1]
    a, b, c = (read_metrics(br_runs / n / "metrics.csv") for n in ("br_a", "br_b", "br_c"))
    assert a[0]["step"] == "0" and a[0]["eval_return"] == offline_last["eval_return"]
    assert a == b and a != c
    ca, cb = (torch.load(br_runs / n / "checkpoint.pt", weights_only=False) for n in ("br_a", "br_b"))
    for key in ("actor", "critic", "weight_net"):
        for k in ca[key]:
            assert torch.equal(ca[key][k], cb[key][k]), (key, k)


def test_first_batch_online_share_is_the_initial_mass_fraction(pretrained, tmp_path):
    """The first update samples a tree whose online rows hold exactly f of the mass (--init-online-fraction), in
    one contiguous block after the offline rows: stratified sampling puts f*B +- 1 online rows in that batch."""
    run_script("balanced_replay.py", "--checkpoint", str(pretrained / "offline" / "checkpoint.pt"), "--online-steps",
               "60", "--warmup-online-steps", "50", "--warmup-updates", "1", "--init-online-fraction", "0.3",
               "--log-every", "50", "--eval-every", "60", "--eval-episodes", "1", "--batch-size", "64",
               "--runs-dir", str(tmp_path), "--run-name", "share")
    row = next(r for r in read_metrics(tmp_path / "share" / "metrics.csv") if r["step"] == "50")
    assert row["updates"] == "1"  # the row averages exactly the first update
    assert abs(float(row["online_share"]) - 0.3) <= 1 / 64 + 1e-9, row["online_share"]


@pytest.mark.parametrize("argv, message", [
    (["--temperature", "0"], "error: --temperature must be > 0, got 0.0"),
    (["--init-online-fraction", "1.0"], "error: --init-online-fraction must be in (0, 1), got 1.0"),
    (["--online-steps", "10", "--warmup-online-steps", "50"], "error: --online-steps 10 is less than"),
])
def test_bad_input(minari_root, tmp_path, argv, message):
    proc = run_script("balanced_replay.py", "--runs-dir", str(tmp_path), *argv, check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1 and lines[0].startswith(message), proc.stderr
