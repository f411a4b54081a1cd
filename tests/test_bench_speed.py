"""scripts/bench_speed.py at toy sizes: every measurement runs and lands in the JSON (speed figures themselves
belong in benchmarks.md, not in tests), and the GEMM floor does the products of one TD3+BC update."""
import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import bench_speed  # noqa: E402


def test_bench_speed_runs_every_measurement(tmp_path):
    out = tmp_path / "speed.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_speed.py"), "--threads", "1", "--dataset-size",
                           "20000", "--online-size", "3000", "--rounds", "1", "--round-updates", "3", "--warmup", "1",
                           "--eval-episodes", "3", "--json-out", str(out)], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(out.read_text())
    assert set(r["updates_per_s"]) == {"textbook TD3+BC update", "textbook TD3 update", "ours: td3_bc.py update",
                                       "matrix products alone (floor)"}
    assert set(r["steps_per_s"]) == {"textbook TD3 step (+ env step)", "ours: naive_ft.py step",
                                     "ours: conservative_ft.py step", "ours: balanced_replay.py step, N=1",
                                     "ours: balanced_replay.py step, N=5"}
    assert all(len(v) == 1 and v[0] > 0 for v in {**r["updates_per_s"], **r["steps_per_s"]}.values())  # one per round
    assert r["ratios"]["textbook TD3+BC update"] == 1.0 and r["ratios"]["textbook TD3 step (+ env step)"] == 1.0
    steps = {k: v[0] for k, v in r["steps_per_s"].items()}
    assert r["balanced_overhead"] == pytest.approx(
        steps["ours: naive_ft.py step"] / steps["ours: balanced_replay.py step, N=1"] - 1)
    assert r["ensemble_cost"] == pytest.approx(
        steps["ours: balanced_replay.py step, N=1"] / steps["ours: balanced_replay.py step, N=5"])
    assert r["dataset"]["transitions"] == 20000
    e = r["evaluation"]
    assert e["episodes"] == 3 and e["env_steps"] > 3
    assert e["mean_return_batched"] == pytest.approx(e["mean_return_one_at_a_time"], rel=1e-3)
    for mem in r["memory_mib"].values():
        assert 0 < mem["peak_rss_during_load_mib"] <= mem["peak_rss_mib"] and 0 < mem["rss_training_mib"] <= mem["peak_rss_mib"]
    assert "| ours: balanced_replay.py step, N=5 |" in proc.stdout


def test_gemm_floor_flops(monkeypatch):
    """The floor multiplies exactly the matrices of a TD3+BC update: 2 of every 2 updates' FLOPs, counted here."""
    flops = []
    real_bmm = torch.bmm
    monkeypatch.setattr(torch, "bmm", lambda x, w: flops.append(2 * x.shape[0] * x.shape[1] * x.shape[2] * w.shape[2])
                        or real_bmm(x, w))
    step = bench_speed.gemm_floor(11, 3, 256)
    step()
    step()
    B, H = 256, 256
    mlp = lambda i, o, n: 2 * n * B * (i * H + H * H + H * o)  # noqa: E731  forward FLOPs of an i-H-H-o MLP
    critic_bwd = 2 * 2 * B * (H + H + H * H + H * H + 14 * H)  # weights and inputs, both members
    actor_step = mlp(11, 3, 1) + mlp(14, 1, 1) + 2 * B * (H + H * H + H * 14) + 2 * B * (3 * H + 3 * H + H * H + H * H + 11 * H)
    assert sum(flops) == 2 * (mlp(11, 3, 1) + 2 * mlp(14, 1, 2) + critic_bwd) + actor_step
