"""Online finetuning: td3_bc.py --online-steps, naive_ft.py and conservative_ft.py through their CLIs, the
checkpoint handoff, determinism, the replay-ratio sampler, the beta schedule, collapse statistics, errors."""
import dataclasses
import json

import pytest
import torch
from conftest import ALGOS, TINY_ID, read_metrics, run_script

import conservative_ft
import naive_ft
import offline_data
import td3_bc

ONLINE = ["--online-steps", "200", "--eval-every", "100", "--log-every", "50", "--eval-episodes", "2",
          "--batch-size", "64"]
FT_SCRIPTS = ["naive_ft.py", "conservative_ft.py"]


@pytest.fixture(scope="module")
def finetuned(pretrained):
    """Each finetuning script from the checkpoint: seed 0 twice, seed 1 once; td3_bc.py continued online."""
    ckpt = str(pretrained / "offline" / "checkpoint.pt")
    for script in FT_SCRIPTS + ["td3_bc.py"]:
        for name, seed in (("a", 0), ("b", 0), ("c", 1)):
            run_script(script, "--checkpoint", ckpt, *ONLINE, "--seed", str(seed), "--runs-dir", str(pretrained),
                       "--run-name", f"{script[:-3]}_{name}")
    return pretrained


@pytest.mark.parametrize("script", FT_SCRIPTS + ["td3_bc.py"])
def test_online_run_outputs(finetuned, script):
    run = finetuned / f"{script[:-3]}_a"
    assert sorted(p.name for p in run.iterdir()) == [".lock", "args.json", "checkpoint.pt", "episodes.csv",
                                                     "metrics.csv", "summary.json"]  # no temporary file left
    rows = read_metrics(run / "metrics.csv")
    assert all(r["phase"] == "online" for r in rows)  # a checkpoint means no offline steps by default
    assert [int(r["step"]) for r in rows] == [0, 50, 100, 150, 200]
    assert [r["eval_score"] != "" for r in rows] == [True, False, True, False, True]
    for r in rows[1:]:  # collapse diagnostics on every online row
        for col in ("critic_loss", "pi_dist", "q_pi_offline", "q_pi_online"):
            assert float(r[col]) == float(r[col]), col  # not NaN
        assert float(r["pi_dist"]) > 0  # the actor has left pi_0 (0 if pi_0 were the live actor, not a frozen copy)
    assert rows[0]["pi_dist"] == ""  # step 0: no diagnostics before the first update
    summary = json.loads((run / "summary.json").read_text())
    scores = [float(r["eval_score"]) for r in rows if r["eval_score"]]
    assert summary["step0_score"] == pytest.approx(scores[0]) and summary["final_score"] == pytest.approx(scores[-1])
    assert summary["dip"] == pytest.approx(max(0.0, scores[0] - min(scores[1:])))
    ckpt = torch.load(run / "checkpoint.pt", weights_only=False)
    assert ckpt["phase"] == "online" and ckpt["step"] == 200 and ckpt["algorithm"] == script[:-3]
    assert ckpt["pretrained_actor"] is not None
    agent = torch.load(finetuned / "offline" / "checkpoint.pt", weights_only=False)
    assert json.loads((run / "args.json").read_text())["checkpoint_sha256"] == td3_bc.weights_sha256(agent)
    args = json.loads((run / "args.json").read_text())["args"]
    assert args["offline_steps"] == 0 and args["dataset_id"] == TINY_ID
    assert args["offline_ratio"] == {"naive_ft.py": -1.0, "conservative_ft.py": 0.5, "td3_bc.py": -1.0}[script]
    with open(run / "episodes.csv") as f:
        assert f.readline().strip() == "step,return,length,score"


@pytest.mark.parametrize("script", FT_SCRIPTS + ["td3_bc.py"])
def test_handoff_step0_equals_offline_final_eval(finetuned, script):
    """The finetuning run's step-0 evaluation is exactly the offline run's final evaluation (same seed)."""
    offline_last = read_metrics(finetuned / "offline" / "metrics.csv")[-1]
    online_first = read_metrics(finetuned / f"{script[:-3]}_a" / "metrics.csv")[0]
    assert online_first["step"] == "0" and online_first["eval_return"] == offline_last["eval_return"]
    assert online_first["eval_score"] == offline_last["eval_score"]


@pytest.mark.parametrize("script", FT_SCRIPTS + ["td3_bc.py"])
def test_determinism(finetuned, script):
    name = script[:-3]
    a, b, c = (finetuned / f"{name}_{x}" for x in "abc")
    assert read_metrics(a / "metrics.csv") == read_metrics(b / "metrics.csv")
    assert (a / "episodes.csv").read_text() == (b / "episodes.csv").read_text()
    assert (a / "summary.json").read_text() == (b / "summary.json").read_text()
    assert read_metrics(a / "metrics.csv") != read_metrics(c / "metrics.csv")
    ca, cb, cc = (torch.load(x / "checkpoint.pt", weights_only=False) for x in (a, b, c))
    for key in ("actor", "critic", "actor_target", "critic_target"):
        for k in ca[key]:
            assert torch.equal(ca[key][k], cb[key][k]), (key, k)
    assert not torch.equal(ca["actor"]["net.0.weight"], cc["actor"]["net.0.weight"])


@pytest.mark.parametrize("run", ["a", "c"])
def test_methods_differ(finetuned, run):
    """Same seed, same checkpoint, 200 online steps: the difference each method should make. Naive TD3 has nothing
    holding the actor, so it moves much further from pi_0 than conservative finetuning's trust region allows, and
    the trust region pulls the actor back towards pi_0 as the critic settles."""
    def pi_dist(name):
        return [float(r["pi_dist"]) for r in read_metrics(finetuned / f"{name}_{run}" / "metrics.csv")[1:]]
    naive, conservative = pi_dist("naive_ft"), pi_dist("conservative_ft")
    assert naive[-1] > 2 * conservative[-1], (naive, conservative)
    assert naive[-1] > naive[0] and conservative[-1] < conservative[0], (naive, conservative)


def test_in_script_pretraining(minari_root, tmp_path):
    """Without --checkpoint the script pretrains TD3+BC first, then finetunes."""
    run_script("conservative_ft.py", "--dataset-id", TINY_ID, "--offline-steps", "100", *ONLINE,
               "--runs-dir", str(tmp_path), "--run-name", "x")
    rows = read_metrics(tmp_path / "x" / "metrics.csv")
    assert [(r["phase"], r["step"]) for r in rows if r["eval_score"]] == [
        ("offline", "100"), ("online", "0"), ("online", "100"), ("online", "200")]
    assert rows[0]["beta"] == "" and float(rows[-1]["beta"]) < 1.0


@pytest.mark.parametrize("ratio, n_on, expect_off", [(0.5, 10, 128), (0.0, 10, 0), (1.0, 10, 256), (0.3, 1, 77),
                                                     (0.5, 0, 256)])
def test_replay_indices_fractions(ratio, n_on, expect_off):
    n_off = 1000
    for module in (naive_ft, conservative_ft, td3_bc):
        torch.manual_seed(0)
        idx = module.replay_indices(n_off, n_on, 256, ratio, "cpu")
        assert idx.shape == (256,) and idx.min() >= 0 and idx.max() < n_off + n_on
        assert int((idx < n_off).sum()) == expect_off  # exactly round(r * B) offline rows


def test_replay_indices_union():
    torch.manual_seed(0)
    idx = naive_ft.replay_indices(300, 100, 100_000, -1.0, "cpu")
    assert idx.min() == 0 and idx.max() == 399
    frac = float((idx >= 300).float().mean())  # online share ~ 100 / 400, binomial std ~ 0.0014
    assert abs(frac - 0.25) < 0.01


def test_beta_schedule():
    args = conservative_ft.Args(beta_start=1.0, beta_end=0.1, beta_decay_steps=100)
    assert conservative_ft.beta_schedule(1, args) == pytest.approx(1.0)
    assert conservative_ft.beta_schedule(51, args) == pytest.approx(0.55)
    assert conservative_ft.beta_schedule(101, args) == pytest.approx(0.1)
    assert conservative_ft.beta_schedule(10_000, args) == pytest.approx(0.1)
    assert conservative_ft.beta_schedule(1, conservative_ft.Args(beta_decay_steps=0)) == pytest.approx(0.1)


def test_collapse_summary():
    s = offline_data.collapse_summary([(0, 50.0), (10, 20.0), (20, 40.0), (30, 55.0), (40, 70.0)], window=25)
    assert s["step0_score"] == 50.0 and s["min_score_in_window"] == 20.0 and s["dip"] == 30.0
    assert s["recovery_steps"] == 30 and s["final_score"] == 70.0
    s = offline_data.collapse_summary([(0, 50.0), (10, 60.0), (20, 40.0)], window=15)  # dip only after the window
    assert s["dip"] == 0.0 and s["recovery_steps"] == 0
    s = offline_data.collapse_summary([(0, 50.0), (10, 30.0), (20, 40.0)], window=100)
    assert s["dip"] == 20.0 and s["recovery_steps"] is None


def test_conservative_update_regularizes_towards_pretrained_policy():
    """With a huge beta and no Q gradient, online actor updates pull pi towards pi_0, not towards batch actions."""
    torch.manual_seed(0)
    args = conservative_ft.Args(lr=1e-2)
    actor, actor0 = conservative_ft.Actor(4, 2, torch.ones(2), 32), conservative_ft.Actor(4, 2, torch.ones(2), 32)
    actor0.requires_grad_(False)
    critic = conservative_ft.Critic(4, 2, 32)
    critic_t, actor_t = conservative_ft.Critic(4, 2, 32), conservative_ft.Actor(4, 2, torch.ones(2), 32)
    a_opt, c_opt = torch.optim.Adam(actor.parameters(), lr=1e-2), torch.optim.Adam(critic.parameters(), lr=1e-2)
    obs = torch.randn(64, 4)
    batch = (obs, torch.zeros(64, 2), torch.zeros(64, 1), torch.randn(64, 4), torch.zeros(64, 1))
    dist = lambda: float(((actor(obs) - actor0(obs)) ** 2).mean().detach())  # noqa: E731
    before = dist()
    for step in range(2, 202, 2):
        conservative_ft.update(step, batch, actor, actor_t, critic, critic_t, a_opt, c_opt, args, offline=False,
                               beta=1e4, anchor=actor0)
    assert dist() < 0.05 * before


def test_anchor_follows_the_policy(finetuned, tmp_path):
    """--anchor-tau moves the trust region's centre pi_ref from pi_0 towards the actor. At tau_ref = 1 it is the
    actor itself at every actor update, so the trust region has no gradient: the run is beta = 0's, bit for bit."""
    def run(name, *flags):
        run_script("conservative_ft.py", "--checkpoint", str(finetuned / "offline" / "checkpoint.pt"), *ONLINE,
                   *flags, "--runs-dir", str(tmp_path), "--run-name", name)
        return torch.load(tmp_path / name / "checkpoint.pt", weights_only=False)

    frozen = torch.load(finetuned / "conservative_ft_a" / "checkpoint.pt", weights_only=False)
    follow, one = run("follow", "--anchor-tau", "0.01"), run("one", "--anchor-tau", "1")
    free = run("free", "--beta-start", "0", "--beta-end", "0")
    assert frozen["anchor"] is None  # the default: pi_ref is pi_0
    dist = lambda a, b: sum(float((a[k] - b[k]).norm()) for k in a)  # noqa: E731
    pi0, pi = follow["pretrained_actor"], follow["actor"]
    assert 0 < dist(follow["anchor"], pi0) and dist(follow["anchor"], pi) < dist(pi0, pi)
    assert any(not torch.equal(follow["actor"][k], frozen["actor"][k]) for k in pi)
    assert all(torch.equal(one["anchor"][k], one["actor"][k]) for k in pi)
    assert all(torch.equal(one["actor"][k], free["actor"][k]) for k in pi)
    assert all(float(r["reg_loss"]) == 0.0 for r in read_metrics(tmp_path / "one" / "metrics.csv")[1:])
    proc = run_script("conservative_ft.py", "--anchor-tau", "1.5", "--runs-dir", str(tmp_path), check=False)
    assert proc.returncode != 0 and proc.stderr.strip() == "error: --anchor-tau must be in [0, 1], got 1.5"


def tiny_agent(seed: int = 0):
    """Actor, critic, their targets and Adam optimizers of a 4-d observation, 2-d action agent."""
    torch.manual_seed(seed)
    actor, actor_t = conservative_ft.Actor(4, 2, torch.ones(2), 32), conservative_ft.Actor(4, 2, torch.ones(2), 32)
    critic, critic_t = conservative_ft.Critic(4, 2, 32), conservative_ft.Critic(4, 2, 32)
    return [actor, actor_t, critic, critic_t, torch.optim.Adam(actor.parameters(), lr=1e-3),
            torch.optim.Adam(critic.parameters(), lr=1e-3)]


def test_td_rule_signal_and_beta_by_hand():
    """One actor update moves log beta_t by --beta-lr * (signal / --beta-target - 1), the signal computed here by hand
    from copies of the networks: the mean squared TD error (both twins) of the batch's online rows over its offline
    rows. The rule only moves beta: with --beta-lr 0 the weights equal fixed's."""
    import copy
    import math
    args = conservative_ft.Args(beta_rule="td", beta_lr=0.05, beta_target=1.3, beta_start=10.0, beta_end=1e-3,
                                policy_noise=0.0, offline_ratio=0.25)
    g = torch.Generator().manual_seed(1)
    obs, act = torch.randn(64, 4, generator=g), torch.rand(64, 2, generator=g) * 2 - 1
    next_obs = torch.randn(64, 4, generator=g)
    batch = (obs, act, torch.randn(64, 1, generator=g), next_obs, (torch.rand(64, 1, generator=g) < 0.1).float())
    nets = tiny_agent()
    actor0, actor_t0, critic0, critic_t0 = (copy.deepcopy(n) for n in nets[:4])
    log_beta = torch.tensor(math.log(0.5))
    info = conservative_ft.update(2, batch, *nets, args, offline=False, beta=log_beta.exp(), anchor=actor0,
                                  log_beta=log_beta)
    with torch.no_grad():
        q = critic0(obs, act)
        next_q = critic_t0(next_obs, actor_t0(next_obs).clamp(-1, 1)).min(0).values  # targets before their step
        y = batch[2][:, 0] + args.gamma * (1 - batch[4][:, 0]) * next_q
        td2 = ((q - y) ** 2).mean(0)
        signal = td2[16:].mean() / td2[:16].mean()  # round(0.25 * 64) = 16 offline rows first
    assert float(info["beta_signal"]) == pytest.approx(float(signal) / 1.3, rel=1e-5)
    assert float(log_beta) == pytest.approx(math.log(0.5) + 0.05 * (float(signal) / 1.3 - 1), rel=1e-5, abs=1e-6)
    log_beta.fill_(math.log(20.0))  # above --beta-start: clamped back into [--beta-end, --beta-start]
    conservative_ft.update(2, batch, *tiny_agent(), args, offline=False, beta=0.5, anchor=actor0, log_beta=log_beta)
    assert float(log_beta) <= math.log(10.0) + 1e-6
    a, b = tiny_agent(), tiny_agent()  # the signal is read, never used by the update itself
    conservative_ft.update(2, batch, *a, dataclasses.replace(args, beta_lr=0.0), offline=False, beta=0.5,
                           anchor=actor0, log_beta=torch.tensor(0.0))
    conservative_ft.update(2, batch, *b, dataclasses.replace(args, beta_rule="fixed"), offline=False, beta=0.5,
                           anchor=actor0)
    assert all(torch.equal(x, y) for x, y in zip(a[0].state_dict().values(), b[0].state_dict().values()))


def test_td_rule_in_a_run_and_bad_values(finetuned, tmp_path):
    """--beta-rule td in whole runs: args.json records the default set point 2 and rate 3e-3; metrics.csv logs beta_t
    and the signal; beta_t stays in [--beta-end, --beta-start], and falls step by step from --beta-start when the
    signal is below its set point (--beta-target 100, a --beta-lr too small to reach --beta-end). An unknown rule
    (the first screen's returns and disagreement were removed), or td without a range or without both kinds of
    rows in a batch, is one line."""
    import math
    ckpt = str(finetuned / "offline" / "checkpoint.pt")
    for name, flags in (("default", []), ("low", ["--beta-lr", "0.01", "--beta-target", "100"])):
        run_script("conservative_ft.py", "--checkpoint", ckpt, *ONLINE, "--beta-rule", "td", *flags,
                   "--runs-dir", str(tmp_path), "--run-name", name)
    recorded = json.loads((tmp_path / "default" / "args.json").read_text())["args"]
    assert (recorded["beta_target"], recorded["beta_lr"]) == (2.0, 3e-3)
    for name in ("default", "low"):
        rows = [r for r in read_metrics(tmp_path / name / "metrics.csv") if r["phase"] == "online" and r["step"] != "0"]
        betas = [float(r["beta"]) for r in rows]
        assert all(0.1 - 1e-6 <= b <= 1.0 for b in betas) and all(float(r["beta_signal"]) > 0 for r in rows)
        log_beta = float(torch.load(tmp_path / name / "checkpoint.pt", weights_only=False)["beta_rule"]["log_beta"])
        assert math.log(0.1) - 1e-6 <= log_beta <= 0.0
    assert betas == sorted(betas, reverse=True) and betas[-1] < betas[0] < 1.0 and log_beta < math.log(betas[-1])
    for flags in (["--beta-rule", "nope"], ["--beta-rule", "returns"], ["--beta-rule", "disagreement"],
                  ["--beta-rule", "td", "--offline-ratio", "-1"], ["--beta-rule", "td", "--beta-end", "0"]):
        proc = run_script("conservative_ft.py", *flags, "--runs-dir", str(tmp_path), check=False)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 1 and len(lines) == 1 and lines[0].startswith(f"error: --beta-rule {flags[1]}: ")


def test_lagrange_rule_by_hand(minari_root):
    """--beta-rule lagrange: after an episode, the violation is (step-0 score - --beta-margin of it - the episode's
    score) / |step-0 score|, and log beta_t moves by --beta-lr times it, within [log --beta-end, log --beta-start]
    (scores normalized with the dataset's reference scores: here score = return - 10)."""
    import math

    import minari
    dataset = minari.load_dataset(TINY_ID)
    args = conservative_ft.Args(beta_rule="lagrange", beta_lr=0.5, beta_margin=0.1, beta_start=1.0, beta_end=0.1)
    log_beta = torch.tensor(math.log(0.5))
    step = lambda ret, s0: conservative_ft.dual_ascent(log_beta, ret, s0, dataset, args)  # noqa: E731
    assert step(70.0, 80.0) == pytest.approx((80.0 - 8.0 - 60.0) / 80.0)
    assert float(log_beta) == pytest.approx(math.log(0.5) + 0.5 * 0.15, rel=1e-6)  # below the line: beta grows
    assert step(110.0, 80.0) == pytest.approx(-0.35)
    assert float(log_beta) == pytest.approx(math.log(0.5) + 0.5 * (0.15 - 0.35), rel=1e-6)  # above: it decays
    assert step(-490.0, -50.0) == pytest.approx((-50 - 5 + 500) / 50)
    assert float(log_beta) == pytest.approx(0.0, abs=1e-7)  # a negative step-0 score too; clamped at --beta-start
    step(1e6, 80.0)
    assert float(log_beta) == pytest.approx(math.log(0.1), rel=1e-6)  # and at --beta-end


def test_noisy_score_by_hand(pretrained):
    """--beta-rule lagrange's line: pi_0's mean score on the evaluation episodes with the exploration noise from its own
    generator: with no noise it is the step-0 evaluation's score; with noise the same value twice, another one than
    without, and the global RNG (the run's own streams) untouched."""
    ckpt = torch.load(pretrained / "offline" / "checkpoint.pt", weights_only=False)
    import minari
    dataset = minari.load_dataset(TINY_ID)
    max_action = torch.as_tensor(dataset.action_space.high, dtype=torch.float32)
    actor = conservative_ft.Actor(len(ckpt["obs_mean"]), len(max_action), max_action, ckpt["args"]["hidden"])
    actor.load_state_dict(ckpt["actor"])
    envs = [offline_data.make_eval_env(dataset) for _ in range(3)]
    score = lambda noise: conservative_ft.noisy_score(  # noqa: E731
        actor, envs, ckpt["obs_mean"], ckpt["obs_std"], max_action, dataset,
        conservative_ft.Args(seed=4, expl_noise=noise), "cpu")
    plain = offline_data.evaluate(actor, envs, ckpt["obs_mean"], ckpt["obs_std"], 4, "cpu") - 10.0  # score = return - 10
    assert score(0.0) == pytest.approx(plain.mean(), rel=1e-9)
    rng = torch.get_rng_state()
    noisy = score(0.3)
    assert torch.equal(torch.get_rng_state(), rng) and noisy == score(0.3) and noisy != pytest.approx(plain.mean())


def test_lagrange_rule_in_a_run(finetuned, tmp_path):
    """A whole run, checked from its files: without --beta-lr, args.json records lagrange's own rate 0.5; the step-0
    score the rule holds episodes to (pi_0's noisy score, computed again here from the checkpoint's pi_0, not the
    step-0 evaluation's); each row's beta_signal the mean violation of the row's episodes; beta_t the dual ascent
    replayed from --beta-start over the episodes (--beta-margin 0.9: a low line that episodes clear, so beta_t decays);
    a floor of 0 is one line, the removed --beta-line (its eval line reruns at 81e6f2f) an error."""
    import math

    import minari
    proc = run_script("conservative_ft.py", "--checkpoint", str(finetuned / "offline" / "checkpoint.pt"), *ONLINE,
                      "--beta-rule", "lagrange", "--beta-margin", "0.9", "--runs-dir", str(tmp_path),
                      "--run-name", "lag")
    lr = json.loads((tmp_path / "lag" / "args.json").read_text())["args"]["beta_lr"]
    assert lr == 0.5  # lagrange's own default rate, the screen's
    score0 = float(proc.stdout.split("held to a step-0 score of ")[1].split()[0])
    rows = [r for r in read_metrics(tmp_path / "lag" / "metrics.csv") if r["phase"] == "online"]
    ckpt = torch.load(tmp_path / "lag" / "checkpoint.pt", weights_only=False)
    dataset = minari.load_dataset(TINY_ID)
    max_action = torch.as_tensor(dataset.action_space.high, dtype=torch.float32)
    pi0 = conservative_ft.Actor(len(ckpt["obs_mean"]), len(max_action), max_action, ckpt["args"]["hidden"])
    pi0.load_state_dict(ckpt["pretrained_actor"])
    envs = [offline_data.make_eval_env(dataset) for _ in range(2)]
    exact = conservative_ft.noisy_score(pi0, envs, ckpt["obs_mean"], ckpt["obs_std"], max_action, dataset,
                                        conservative_ft.Args(seed=0), "cpu")
    assert score0 == pytest.approx(exact, abs=0.005) and exact != pytest.approx(float(rows[0]["eval_score"]))
    score0 = exact
    episodes = [e.split(",") for e in (tmp_path / "lag" / "episodes.csv").read_text().splitlines()[1:]]
    assert episodes and any(r["beta_signal"] for r in rows[1:])
    log_beta, last = 0.0, 0
    for r in rows[1:]:
        step = int(r["step"])
        mine = [(score0 - 0.9 * abs(score0) - float(e[3])) / abs(score0) for e in episodes if last < int(e[0]) <= step]
        for v in mine:
            log_beta = min(0.0, max(math.log(0.1), log_beta + lr * v))
        assert (r["beta_signal"] == "") == (not mine)
        if mine:
            assert float(r["beta_signal"]) == pytest.approx(sum(mine) / len(mine), rel=1e-4, abs=1e-6)
        assert float(r["beta"]) == pytest.approx(math.exp(log_beta), rel=1e-4)
        last = step
    assert float(rows[-1]["beta"]) < float(rows[1]["beta"]) < 1.0  # episodes clear the low line: beta_t decays
    assert float(ckpt["beta_rule"]["log_beta"]) == pytest.approx(log_beta, rel=1e-4, abs=1e-6)
    proc = run_script("conservative_ft.py", "--beta-rule", "lagrange", "--beta-end", "0", "--runs-dir", str(tmp_path),
                      check=False)
    assert proc.returncode == 1 and proc.stderr.strip().startswith("error: --beta-rule lagrange: ")
    proc = run_script("conservative_ft.py", "--beta-rule", "lagrange", "--beta-line", "noisy", check=False)
    assert proc.returncode != 0 and "--beta-line" in proc.stderr and "Traceback" not in proc.stderr


def test_anchor_critic_target_by_hand():
    """--anchor-critic: the critic's target is r + gamma (1 - d) (min Q'(s', a') - beta mean|Q'| / alpha mean (a' -
    pi_ref(s'))^2), here computed by hand (no smoothing noise, so a' = pi'(s')); without the flag, the plain target."""
    torch.manual_seed(1)
    batch = (torch.randn(32, 4), torch.rand(32, 2) * 2 - 1, torch.randn(32, 1), torch.randn(32, 4),
             (torch.rand(32, 1) < 0.2).float())
    anchor = conservative_ft.Actor(4, 2, torch.ones(2), 32)
    for flag in (True, False):
        args = conservative_ft.Args(anchor_critic=flag, policy_noise=0.0)
        actor, actor_t, critic, critic_t, a_opt, c_opt = tiny_agent(3)
        obs, act, rew, next_obs, done = batch
        with torch.no_grad():
            next_act = actor_t(next_obs)
            q_next = critic_t(next_obs, next_act).min(0).values
            if flag:
                q_next = q_next - 0.3 * q_next.abs().mean() / 2.5 * ((next_act - anchor(next_obs)) ** 2).mean(-1)
            y = rew[:, 0] + 0.99 * (1 - done[:, 0]) * q_next
            expected = ((critic(obs, act) - y) ** 2).mean(1).sum()
        info = conservative_ft.update(1, batch, actor, actor_t, critic, critic_t, a_opt, c_opt, args, offline=False,
                                      beta=0.3, anchor=anchor)
        assert float(info["critic_loss"]) == pytest.approx(float(expected), rel=1e-5)


def test_diff_naive_conservative_shows_only_the_method():
    """Outside the module docstrings, every line that differs is about the method: the trust region, its
    schedule and flags, lambda, the frozen pi_0, the trust region's centre pi_ref, and the default replay ratio."""
    import difflib

    def code(name):
        return (ALGOS / name).read_text().split('"""', 2)[2].splitlines()

    diff = [line for line in difflib.unified_diff(code("naive_ft.py"), code("conservative_ft.py"), n=0)
            if line[:1] in "+-" and line[:3] not in ("+++", "---")]
    added = [line[1:] for line in diff if line[0] == "+"]
    removed = [line[1:] for line in diff if line[0] == "-"]
    keywords = ("beta", "offline_ratio", "pretrained_actor", "anchor", "pi_ref", "lmbda", "reg_loss", "trust region",
                "conservative_ft", "signal", "td2", "q_pi", "q_next", "noisy", "pi_0")  # --beta-rule's signals,
    # lagrange's noisy pi_0, PROTO's target
    assert all(any(k in line for k in keywords) or not line.strip() for line in added), added
    assert 0 < len(removed) <= 15, removed  # naive lines replaced by the method's (flags, columns, prepare, start, y)


@pytest.mark.parametrize("script", FT_SCRIPTS)
@pytest.mark.parametrize("argv, message", [
    (["--offline-ratio", "-0.5"], "error: --offline-ratio must be in [0, 1], or -1"),
    (["--offline-ratio", "1.5"], "error: --offline-ratio must be in [0, 1], or -1"),
    (["--checkpoint", "/nonexistent/ckpt.pt"], "error: cannot read checkpoint /nonexistent/ckpt.pt: FileNotFoundError"),
    (["--online-steps", "-3"], "error: --online-steps must be >= 0, got -3"),
])
def test_bad_input(minari_root, tmp_path, script, argv, message):
    proc = run_script(script, "--runs-dir", str(tmp_path), *argv, check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1 and lines[0].startswith(message), proc.stderr


@pytest.mark.parametrize("script", FT_SCRIPTS + ["td3_bc.py", "balanced_replay.py"])
def test_mismatched_checkpoint(pretrained, tmp_path, script):
    ckpt = torch.load(pretrained / "offline" / "checkpoint.pt", weights_only=False)
    ckpt["obs_shape"], ckpt["env_spec"] = (17,), json.dumps({"id": "Walker2d-v5"})
    torch.save(ckpt, tmp_path / "walker.pt")
    proc = run_script(script, "--checkpoint", str(tmp_path / "walker.pt"), "--runs-dir", str(tmp_path / "r"),
                      check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: checkpoint {tmp_path / 'walker.pt'} was made for Walker2d-v5 with "
                               f"observations (17,)") and f"dataset {TINY_ID} is Hopper-v5" in lines[0]
    # an explicitly different dataset (by id or by --env) is an error too
    for flag, value in (("--dataset-id", "mujoco/hopper/medium-v0"), ("--env", "hopper")):
        proc = run_script(script, "--checkpoint", str(pretrained / "offline" / "checkpoint.pt"), flag, value,
                          "--runs-dir", str(tmp_path / "r"), check=False)
        assert proc.returncode != 0 and proc.stderr.strip() == (
            f"error: the requested dataset mujoco/hopper/medium-v0 (--env/--dataset-id) differs from the "
            f"checkpoint's dataset {TINY_ID}")
    # a file that is not a checkpoint
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    proc = run_script(script, "--checkpoint", str(tmp_path / "junk.pt"), "--runs-dir", str(tmp_path / "r"), check=False)
    assert proc.returncode != 0 and proc.stderr.strip().startswith(f"error: cannot read checkpoint {tmp_path / 'junk.pt'}")
    assert not (tmp_path / "r").exists()
