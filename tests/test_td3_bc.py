"""td3_bc.py through its CLI: smoke run, run directory, determinism, bad input; and its building blocks."""
import importlib.util
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT, TINY_ID, read_metrics, run_script

import td3_bc

SMOKE = ["--dataset-id", TINY_ID, "--offline-steps", "300", "--eval-every", "150", "--log-every", "100",
         "--eval-episodes", "2", "--batch-size", "64"]


@pytest.fixture(scope="module")
def smoke_runs(minari_root, tmp_path_factory):
    """Three short runs: seed 0 twice and seed 1 once (MKL_VERBOSE=0, the default, only has to be recorded)."""
    runs = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MKL_VERBOSE", "0")
        env.setenv("SMOKE_UNRELATED", "1")
        for name, seed in (("a", 0), ("b", 0), ("c", 1)):
            run_script("td3_bc.py", *SMOKE, "--seed", str(seed), "--runs-dir", str(runs), "--run-name", name)
    return runs


def test_run_directory_contents(smoke_runs):
    run = smoke_runs / "a"
    assert sorted(p.name for p in run.iterdir()) == [".lock", "args.json", "checkpoint.pt", "episodes.csv",
                                                     "metrics.csv"]
    meta = json.loads((run / "args.json").read_text())
    assert meta["args"]["dataset_id"] == TINY_ID and meta["args"]["offline_steps"] == 300
    assert meta["args"]["device"] == "cpu" and meta["args"]["run_name"] == "a"
    assert meta["meta"]["torch_threads"] == 1 and meta["meta"]["device"] == "cpu"
    assert set(meta["meta"]["packages"]) >= {"torch", "minari", "gymnasium", "numpy", "tyro"}
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert meta["meta"]["git_commit"] == head and len(head) == 40
    assert meta["meta"]["env"]["MKL_VERBOSE"] == "0" and not {"SMOKE_UNRELATED", "PATH"} & set(meta["meta"]["env"])
    assert meta["algorithm"] == "td3_bc" and meta["resumes"] == []
    rows = read_metrics(run / "metrics.csv", drop=())
    assert [int(r["step"]) for r in rows] == [100, 150, 200, 300]
    assert [r["eval_score"] != "" for r in rows] == [False, True, False, True]
    for r in rows:
        assert np.isfinite(float(r["critic_loss"])) and np.isfinite(float(r["q_mean"]))
        assert float(r["updates_per_s"]) > 0
    # normalized score is the tiny dataset's: return - 10 (ref_min 10, ref_max 110)
    assert float(rows[-1]["eval_score"]) == pytest.approx(float(rows[-1]["eval_return"]) - 10.0, abs=1e-6)

    ckpt = torch.load(run / "checkpoint.pt", weights_only=False)
    assert ckpt["step"] == 300 and ckpt["dataset_id"] == TINY_ID and ckpt["algorithm"] == "td3_bc"
    for key in ("actor", "critic", "actor_target", "critic_target", "actor_opt", "critic_opt", "obs_mean",
                "obs_std", "args", "env_spec", "rng"):
        assert key in ckpt, key
    assert ckpt["critic"]["layers.0.weight"].shape == (2, 14, 256)  # twin critics, 11 + 3 inputs
    assert not (run / "checkpoint.pt.tmp").exists()


def test_git_dirty_counts_code_not_run_files(tmp_path, monkeypatch):
    """args.json's git_dirty: a changed tracked file in the code makes the run dirty; committed run files under
    benchmarks/ that a sweep rewrites (sweep.json, a resumed agent's args.json) do not."""
    repo = tmp_path / "repo"
    (repo / "algorithms").mkdir(parents=True)
    (repo / "benchmarks").mkdir()
    shutil.copy(ROOT / "algorithms" / "td3_bc.py", repo / "algorithms")
    (repo / "algorithms" / "notes.txt").write_text("a\n")
    (repo / "benchmarks" / "sweep.json").write_text("{}\n")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    spec = importlib.util.spec_from_file_location("td3_bc_copy", repo / "algorithms" / "td3_bc.py")
    copy = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, copy)  # dataclasses look their module up there
    monkeypatch.setattr(sys, "path", list(sys.path))  # the copy puts its folder first
    spec.loader.exec_module(copy)
    meta = lambda: copy.run_metadata(torch.device("cpu"))  # noqa: E731
    assert meta()["git_dirty"] is False and len(meta()["git_commit"]) == 40
    (repo / "benchmarks" / "sweep.json").write_text('{"runs": {}}\n')
    (repo / "untracked.txt").write_text("x\n")
    assert meta()["git_dirty"] is False
    (repo / "algorithms" / "notes.txt").write_text("b\n")
    assert meta()["git_dirty"] is True


def _tensors(ckpt):
    """Every tensor in a checkpoint, flattened to {path: tensor}."""
    out = {}
    def walk(prefix, x):
        if isinstance(x, torch.Tensor):
            out[prefix] = x
        elif isinstance(x, dict):
            for k, v in x.items():
                walk(f"{prefix}/{k}", v)
        elif isinstance(x, (list, tuple)):
            for i, v in enumerate(x):
                walk(f"{prefix}/{i}", v)
    walk("", ckpt)
    return out


def test_determinism_same_seed_identical_other_seed_differs(smoke_runs):
    a, b, c = (read_metrics(smoke_runs / n / "metrics.csv") for n in "abc")
    assert a == b
    assert a != c
    ta, tb, tc = (_tensors(torch.load(smoke_runs / n / "checkpoint.pt", weights_only=False)) for n in "abc")
    assert ta.keys() == tb.keys() and len(ta) > 20
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k
    assert not torch.equal(ta["/actor/net.0.weight"], tc["/actor/net.0.weight"])


def test_final_checkpoint_is_the_evaluated_policy(smoke_runs, minari_root):
    """Re-evaluating the checkpointed actor reproduces the final logged evaluation exactly."""
    import minari

    from offline_data import make_eval_env

    ckpt = torch.load(smoke_runs / "a" / "checkpoint.pt", weights_only=False)
    actor = td3_bc.Actor(11, 3, torch.ones(3))
    actor.load_state_dict(ckpt["actor"])
    envs = [make_eval_env(minari.load_dataset(TINY_ID)) for _ in range(2)]
    returns = td3_bc.evaluate(actor, envs, ckpt["obs_mean"], ckpt["obs_std"], seed=0, device="cpu")
    last = read_metrics(smoke_runs / "a" / "metrics.csv")[-1]
    assert float(last["eval_return"]) == pytest.approx(returns.mean(), rel=1e-12)


def test_batched_evaluation_matches_one_episode_at_a_time(minari_root):
    """The batched evaluation runs the same episodes as a one-at-a-time loop (same per-episode seeds). A batched
    matmul rounds differently from a single-row one (~1e-7 on actions), so returns agree to a tolerance, not
    bit for bit: 1e-3 relative, far below the spread between episodes."""
    import sys

    import minari

    from offline_data import make_eval_env

    sys.path.insert(0, str(ROOT / "scripts"))
    from bench_speed import evaluate_one_at_a_time

    torch.manual_seed(0)
    actor = td3_bc.Actor(11, 3, torch.ones(3))  # untrained: its episodes end at different steps
    dataset = minari.load_dataset(TINY_ID)
    mean, std = np.zeros(11), np.ones(11)
    batched = td3_bc.evaluate(actor, [make_eval_env(dataset) for _ in range(4)], mean, std, seed=3, device="cpu")
    sequential, lengths = evaluate_one_at_a_time(actor, make_eval_env(dataset), mean, std, seed=3, episodes=4)
    assert len(set(lengths)) > 1  # episodes of different lengths: finished envs must stop while others go on
    np.testing.assert_allclose(batched, sequential, rtol=1e-3)
    assert np.ptp(sequential) > 10 * 1e-3 * np.abs(sequential).max()  # the tolerance is tighter than the spread


def test_env_shorthand_end_to_end(minari_root, tmp_path):
    """`--env hopper` loads mujoco/hopper/medium-v0 (here: the fixture's tiny copy under that id)."""
    run_script("td3_bc.py", "--env", "hopper", "--offline-steps", "20", "--eval-every", "20", "--eval-episodes", "1",
               "--runs-dir", str(tmp_path))
    (run,) = tmp_path.iterdir()
    assert run.name.startswith("mujoco-hopper-medium-v0__td3_bc__0__")
    assert json.loads((run / "args.json").read_text())["args"]["dataset_id"] == "mujoco/hopper/medium-v0"


@pytest.mark.parametrize("argv, message", [
    (["--env", "ant"], "error: unknown --env 'ant'"),
    (["--dataset-id", "nowhere/hopper/missing-v0"], "error: Minari dataset 'nowhere/hopper/missing-v0' is not available"),
    (["--offline-steps", "-5"], "error: --offline-steps must be >= 0, got -5"),
    (["--online-steps", "-1"], "error: --online-steps must be >= 0, got -1"),
    (["--batch-size", "0"], "error: --batch-size must be > 0, got 0"),
    (["--seed", "-1"], "error: --seed must be in [0, 2**32 - 1], got -1"),
    (["--seed", str(2**32)], "error: --seed must be in [0, 2**32 - 1], got 4294967296"),
    (["--device", "tpu"], "error: --device must be auto, cpu or cuda, got 'tpu'"),
])
def test_bad_input_one_line_error(minari_root, tmp_path, argv, message):
    proc = run_script("td3_bc.py", "--runs-dir", str(tmp_path), *argv, check=False)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), proc.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_existing_run_directory_is_an_error(smoke_runs):
    before = (smoke_runs / "a" / "metrics.csv").read_bytes()
    proc = run_script("td3_bc.py", *SMOKE, "--runs-dir", str(smoke_runs), "--run-name", "a", check=False)
    assert proc.returncode != 0
    assert proc.stderr.strip() == f"error: run directory {smoke_runs / 'a'} already exists; choose another " \
                                  f"--run-name or --runs-dir, or continue it with --resume {smoke_runs / 'a'}"
    assert (smoke_runs / "a" / "metrics.csv").read_bytes() == before  # never overwritten


def test_twin_critic_ensemble_equals_two_separate_mlps():
    torch.manual_seed(0)
    critic = td3_bc.Critic(11, 3, hidden=32)
    obs, act = torch.randn(5, 11), torch.randn(5, 3)
    q = critic(obs, act)
    assert q.shape == (2, 5)
    x = torch.cat([obs, act], 1)
    for i in range(2):
        h = x
        for j, layer in enumerate(critic.layers):
            h = h @ layer.weight[i] + layer.bias[i, 0]
            h = torch.relu(h) if j < 2 else h
        torch.testing.assert_close(q[i], h.squeeze(-1))
    torch.testing.assert_close(critic(obs, act, n=1)[0], q[0])


def test_update_matches_textbook_td3_bc():
    """Our fast update (ensemble critics, fused Adam, foreach target lerp) follows the same trajectory as the
    textbook yardstick of scripts/bench_speed.py from the same weights, batches and noise. Floating-point order
    differs (batched vs separate matmuls, fused vs for-loop Adam), so losses agree to 1e-4 relative."""
    import copy
    import sys

    sys.path.insert(0, str(ROOT / "scripts"))
    from bench_speed import TextbookTD3BC

    torch.manual_seed(0)
    o, a, B = 11, 3, 64
    book = TextbookTD3BC(o, a)
    actor = td3_bc.Actor(o, a, torch.ones(a))
    actor.load_state_dict({f"net.{2 * i}.{p}": getattr(getattr(book.actor, f"l{i + 1}"), p)
                           for i in range(3) for p in ("weight", "bias")} | {"max_action": torch.ones(a)})
    critic = td3_bc.Critic(o, a)
    with torch.no_grad():
        for j, layer in enumerate(critic.layers):
            for i, c in enumerate((book.critic1, book.critic2)):
                lin = getattr(c, f"l{j + 1}")
                layer.weight[i] = lin.weight.T
                layer.bias[i, 0] = lin.bias
    actor_t, critic_t = copy.deepcopy(actor).requires_grad_(False), copy.deepcopy(critic).requires_grad_(False)
    actor_opt = torch.optim.Adam(actor.parameters(), lr=3e-4, fused=True)
    critic_opt = torch.optim.Adam(critic.parameters(), lr=3e-4, fused=True)
    args = td3_bc.Args()
    gen = torch.Generator().manual_seed(1)
    for step in range(1, 21):
        s, act = torch.randn(B, o, generator=gen), torch.rand(B, a, generator=gen) * 2 - 1
        r, s2 = torch.randn(B, 1, generator=gen), torch.randn(B, o, generator=gen)
        term = (torch.rand(B, 1, generator=gen) < 0.1).float()
        torch.manual_seed(step)
        ours = td3_bc.update(step, (s, act, r, s2, term), actor, actor_t, critic, critic_t, actor_opt, critic_opt, args)
        torch.manual_seed(step)
        theirs = book.train(s, act, r, s2, 1 - term)
        assert float(ours["critic_loss"]) == pytest.approx(theirs["critic_loss"], rel=1e-4)
        if step % 2 == 0:
            assert float(ours["actor_loss"]) == pytest.approx(theirs["actor_loss"], rel=1e-4)
    torch.testing.assert_close(actor.net[0].weight, book.actor.l1.weight, rtol=1e-4, atol=1e-5)
