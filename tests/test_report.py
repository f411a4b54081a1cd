"""scripts/report.py: tables from per-run files, generated blocks, checkpoint hashes."""
import json
import os
import sys

import pytest
import torch
from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import report  # noqa: E402

HEADER = "phase,step,critic_loss,eval_score,elapsed_s\n"


def write_run(d, rows, summary=None):
    d.mkdir(parents=True)
    (d / "metrics.csv").write_text(HEADER + "".join(",".join(map(str, r)) + "\n" for r in rows))
    if summary:
        (d / "summary.json").write_text(json.dumps(summary))


def test_finetune_row(tmp_path):
    """One method over finished seeds: mean ± sd of the summaries, recovery per seed, the mean after step 0."""
    base = {"min_score_in_window": 10.0, "final_step": 50000}
    write_run(tmp_path / "s0", [("online", 0, "", 50.0, 1), ("online", 5, "", 20.0, 1)], dict(base, step0_score=50.0, dip=40.0,
                                                                  recovery_steps=None, final_score=30.0))
    write_run(tmp_path / "s1", [("online", 0, "", 60.0, 1), ("online", 5, "", 40.0, 1),
                                ("online", 10, "", 60.0, 1)], dict(base, step0_score=60.0, dip=20.0,
                                                                  recovery_steps=7500, final_score=70.0))
    write_run(tmp_path / "s2", [("online", 0, "", 90.0, 1)])  # unfinished: no summary.json, left out
    row = report.finetune_row("naive TD3 finetuning", sorted(tmp_path.glob("s*")))
    assert row.count("|") == report.finetune_header("50k")[0].count("|") == 11
    assert row == ("| naive TD3 finetuning | 2 | 55.0 ± 7.1 | 10.0 ± 0.0 | 30.0 ± 14.1 | never, 7,500 | "
                   "35.0 ± 21.2 | 50.0 ± 28.3 | 50,000 | 0 min |")  # means after step 0: 20 and 50
    assert report.finetune_row("x", [tmp_path / "s2"]) is None


def test_td3_bc_table_last5_and_wall(tmp_path):
    rows = [("offline", 1000 * i, 0.1, 10.0 * i, 60.0 * i) for i in range(1, 8)]
    write_run(tmp_path / "seed0", rows)
    out = report.td3_bc_block(tmp_path)
    assert "| 7,000 | 70.0 | 70.0 |" in out
    assert "| seed0 | 50.0 | 7.0 min |" in out  # mean of 30..70; 420 s


def test_replace_block_and_missing_marker():
    md = "a\n<!-- report:x -->\nold\n<!-- /report:x -->\nb\n"
    assert report.replace_block(md, "x", "new") == "a\n<!-- report:x -->\nnew\n<!-- /report:x -->\nb\n"
    with pytest.raises(SystemExit, match="no block"):
        report.replace_block(md, "y", "new")


def test_checkpoint_hash(pretrained, tmp_path):
    ckpt = torch.load(pretrained / "offline" / "checkpoint.pt", weights_only=False)
    torch.save(dict(ckpt, step=1), tmp_path / "a.pt")
    torch.save(dict(ckpt, step=2), tmp_path / "b.pt")  # other metadata, same weights
    ckpt["critic"] = {k: v + 1e-6 for k, v in ckpt["critic"].items()}
    torch.save(ckpt, tmp_path / "c.pt")
    h = [report.checkpoint_hash(tmp_path / f"{n}.pt") for n in "abc"]
    assert h[0] == h[1] != h[2] and len(h[0]) == 64
    # the scripts record the same hash of the agent a --checkpoint run starts from
    import td3_bc

    assert td3_bc.weights_sha256(torch.load(tmp_path / "c.pt", weights_only=False)) == h[2]


def test_sweep_block_tables_per_seed_and_command(tmp_path):
    """report.py DIR: the finetuning table of a sweep's dataset over seeds (finished runs only), per-seed values
    and the sweep command."""
    ds = tmp_path / "main" / "standin-hopper-medium-v0"
    summary = {"min_score_in_window": 10.0, "collapse_window": 100000, "final_step": 200000, "recovery_steps": None}
    for seed, (s0, mid, fin) in enumerate([(50.0, 20.0, 30.0), (60.0, 40.0, 70.0)]):
        write_run(ds / f"seed{seed}" / "naive_ft", [("online", 0, "", s0, 1), ("online", 5, "", mid, 1),
                                                    ("online", 10, "", fin, 1)],
                  dict(summary, step0_score=s0, dip=s0 - mid, final_score=fin))
        write_run(ds / f"seed{seed}" / "pretrain", [("offline", 10, 0.1, s0, 1)])
    write_run(ds / "seed0" / "naive_ft-reset", [("online", 0, "", 50.0, 1), ("online", 5, "", 45.0, 1)],
              dict(summary, step0_score=50.0, dip=5.0, final_score=45.0))
    write_run(ds / "seed1" / "naive_ft-reset", [("online", 0, "", 60.0, 1)])  # unfinished: no summary
    (tmp_path / "main" / "sweep.json").write_text(json.dumps({"command": "python scripts/sweep.py --seeds 0 1"}))
    lines = report.sweep_block(ds).splitlines()
    assert lines[0].startswith("| method | seeds | step-0 score | lowest score (first 100k) |")
    assert lines[2].startswith("| naive TD3 finetuning | 2 | 55.0 ± 7.1 |") and "| 40.0 ± 21.2 | 50.0 ± 28.3 |" in lines[2]
    assert lines[3].startswith("| naive TD3 finetuning [reset] | 1 | 50.0 |")
    assert "| naive TD3 finetuning | 25.0 / 30.0 | 55.0 / 70.0 |" in lines  # per seed: mean after step 0 / final
    assert "| naive TD3 finetuning [reset] | 45.0 / 45.0 | – |" in lines
    assert lines[-1] == "Made by `python scripts/sweep.py --seeds 0 1` (stand-in data where the id says standin)."
    assert lines[-3] == ("Agents (weight hash of each seed's TD3+BC agent, the CPUs it was pretrained on): seed0 – (CPU "
                         "not recorded); seed1 – (CPU not recorded).")  # runs without args.json: nothing recorded
    for seed, (h, cpu) in enumerate([("ab" * 32, "CPU A"), ("cd" * 32, "CPU B")]):
        (ds / f"seed{seed}" / "naive_ft" / "args.json").write_text(json.dumps({"checkpoint_sha256": h}))
        (ds / f"seed{seed}" / "pretrain" / "args.json").write_text(json.dumps(
            {"meta": {"cpu": "CPU X"}, "resumes": [{"meta": {"cpu": cpu}}] if seed else []}))
    (ds / "seed0" / "pretrain" / "args.json").write_text(json.dumps({"meta": {"cpu": "CPU A"}, "resumes": []}))
    assert report.sweep_block(ds).splitlines()[-3] == ("Agents (weight hash of each seed's TD3+BC agent, the CPUs it was "
                                                       "pretrained on): seed0 abababab… (CPU A); seed1 cdcdcdcd… "
                                                       "(CPU X, again on CPU B).")  # first start, then each re-make
    (ds / "seed1" / "pretrain" / "args.json").write_text(json.dumps({"meta": {"cpu": "CPU X"}, "resumes": [
        {"meta": {"cpu": "CPU B", "env": {"LD_PRELOAD": "/tmp/libmklintel.so"}}}, {"meta": {"cpu": "CPU X"}}]}))
    assert report.sweep_block(ds).splitlines()[-3].endswith(
        "seed1 cdcdcdcd… (CPU X, again on CPU B with LD_PRELOAD libmklintel.so).")


def test_summary_block_over_datasets(tmp_path):
    """Table a's summary: one row per method, one column per dataset, mean after step 0 ± sd (best in bold) and dip;
    a method with fewer finished seeds than the dataset has says so and is not bold, even with the higher mean; one
    without runs there gets –."""
    summary = {"min_score_in_window": 10.0, "collapse_window": 100000, "final_step": 10, "recovery_steps": 0}
    hop, cheetah = tmp_path / "standin-hopper-medium-v0", tmp_path / "standin-halfcheetah-medium-v0"
    for seed, (mid, fin) in enumerate([(20.0, 30.0), (40.0, 70.0)]):  # naive: means after step 0 25 and 55
        write_run(hop / f"seed{seed}" / "naive_ft", [("online", 0, "", 50.0, 1), ("online", 5, "", mid, 1),
                                                     ("online", 10, "", fin, 1)], dict(summary, dip=10.0 * seed))
    write_run(hop / "seed0" / "conservative_ft", [("online", 0, "", 50.0, 1), ("online", 10, "", 60.0, 1)],
              dict(summary, dip=0.0))
    write_run(hop / "seed1" / "conservative_ft", [("online", 0, "", 50.0, 1)])  # unfinished
    write_run(cheetah / "seed0" / "naive_ft", [("online", 0, "", 50.0, 1), ("online", 10, "", 80.0, 1)],
              dict(summary, dip=0.0))
    lines = report.summary_block([cheetah, hop]).splitlines()
    assert lines[0] == "| method | `standin/halfcheetah/medium-v0` | `standin/hopper/medium-v0` |"
    assert lines[2] == "| naive TD3 finetuning | **80.0** (dip 0.0) | **40.0 ± 21.2** (dip 5.0 ± 7.1) |"
    assert lines[3] == "| conservative finetuning (ours) | – | 60.0 (dip 0.0), 1 of 2 seeds |"
    assert len(lines) == 4
    assert report.summary_block([tmp_path / "empty"]) == "(no finished run yet)"


def test_diagnostics_block_for_labelled_runs(tmp_path):
    cols = "phase,step,pi_dist,q_pi_offline,q_pi_online\n"
    for seed, scale in ((0, 1.0), (1, 3.0)):
        d = tmp_path / f"seed{seed}" / "naive_ft"
        d.mkdir(parents=True)
        (d / "metrics.csv").write_text(cols + f"online,5,{0.1 * scale},{10 * scale},{20 * scale}\n"
                                              f"online,10,{0.2 * scale},{30 * scale},{40 * scale}\n")
        (d / "summary.json").write_text("{}")
    lines = report.diagnostics_block({"naive": sorted(tmp_path.glob("seed*/naive_ft"))}, (5, 10)).splitlines()
    assert lines[2] == "| naive | 0.20 | 0.40 | 20 / 40 | 60 / 80 |"
    assert report.diagnostics_block({"naive": sorted(tmp_path.glob("seed*/naive_ft"))}, (5, 20)) == \
        "(no finished run yet)"  # no run reached step 20


def test_replay_block_and_a_dataset_without_finished_runs(tmp_path):
    """Balanced replay's online share and Q-ensemble std at the diagnostic steps, mean over finished seeds; a
    sweep dataset with no finished run says so instead of printing empty tables."""
    cols = "phase,step,online_share,q_std,eval_score\n"
    for seed, scale in ((0, 1.0), (1, 3.0)):
        d = tmp_path / "ens" / "ds" / f"seed{seed}" / "balanced_replay"
        d.mkdir(parents=True)
        (d / "metrics.csv").write_text(cols + f"online,5,{0.1 * scale},{scale},\nonline,10,{0.2 * scale},{2 * scale},\n")
        (d / "summary.json").write_text("{}")
    unfinished = tmp_path / "ens" / "ds" / "seed2" / "balanced_replay"
    unfinished.mkdir(parents=True)
    (unfinished / "metrics.csv").write_text(cols + "online,5,0.9,9,\nonline,10,0.9,9,\n")
    naive = tmp_path / "ens" / "ds" / "seed0" / "naive_ft"  # logs neither: no row
    write_run(naive, [("online", 5, 0.1, 50.0, 1), ("online", 10, 0.1, 50.0, 1)], {"final_score": 50.0})
    runs = {"balanced": sorted((tmp_path / "ens" / "ds").glob("seed*/balanced_replay")), "naive": [naive]}
    lines = report.replay_block(runs, (5, 10)).splitlines()
    assert lines[0] == "| method | online share @5 | online share @10 | Q std over members @5 | Q std over members @10 |"
    assert lines[2:] == ["| balanced | 0.2 | 0.4 | 2 | 4 |"]
    assert report.replay_block({"naive": [naive]}, (5, 10)) == "(no finished balanced replay run yet)"
    (tmp_path / "ens" / "sweep.json").write_text(json.dumps({"command": "python scripts/sweep.py --seeds 2"}))
    empty = tmp_path / "ens" / "other" / "seed2" / "naive_ft"
    write_run(empty, [("online", 0, "", 50.0, 1)])  # started, not finished
    assert report.sweep_block(empty.parents[1]).splitlines() == [
        "No finetuning run of this dataset has finished yet.", "",
        "Made by `python scripts/sweep.py --seeds 2` (stand-in data where the id says standin)."]


def test_sweep_block_window_of_short_runs_and_segments(tmp_path):
    """A run shorter than its collapse window is labelled by its length (a 25k run's lowest score is over its 25k,
    not "the first 50k"); segments_block averages the evaluations inside each span of the online phase."""
    ds = tmp_path / "long" / "standin-hopper-medium-v0"
    summary = {"min_score_in_window": 1.0, "collapse_window": 50000, "final_step": 25000, "recovery_steps": 0,
               "step0_score": 1.0, "dip": 0.0, "final_score": 4.0}
    rows = [("online", 5000 * i, "", float(i), 1) for i in range(6)]  # scores 0..5 at 0, 5k, ..., 25k
    write_run(ds / "seed0" / "conservative_ft", rows, summary)
    write_run(ds / "seed0" / "naive_ft", rows[:3])  # unfinished: left out of both tables
    assert "| lowest score (first 25k) |" in report.sweep_block(ds).splitlines()[0]
    lines = report.segments_block(report.sweep_runs(ds), 25000, parts=2).splitlines()
    assert lines[0] == "| method | (0k, 12.5k] | (12.5k, 25k] |"
    assert lines[2:] == ["| conservative_ft | 1.5 | 4.0 |"]  # mean(1, 2) over (0, 12.5k]; mean(3, 4, 5) after


def test_sweep_readme_holds_each_datasets_detail(tmp_path):
    """report.py DIR writes DIR/README.md: the grid's command, then per dataset its table, per-seed values, agents,
    diagnostics, segments and the curves' link; a dataset without finished runs says so."""
    sweep = tmp_path / "demo"
    ds = sweep / "standin-hopper-medium-v0"
    cols = "phase,step,critic_loss,eval_score,elapsed_s,pi_dist,q_pi_offline,q_pi_online\n"
    for seed in (0, 1):
        run = ds / f"seed{seed}" / "naive_ft"
        run.mkdir(parents=True)
        (run / "metrics.csv").write_text(cols + "online,0,,50.0,1,,,\n" + f"online,5,0.1,{20.0 + seed},1,0.5,10,20\n"
                                         + f"online,10,0.1,{40.0 + seed},1,0.7,30,40\n")
        (run / "summary.json").write_text(json.dumps({"min_score_in_window": 20.0, "collapse_window": 10,
                                                      "final_step": 10, "recovery_steps": None, "step0_score": 50.0,
                                                      "dip": 30.0 - seed, "final_score": 40.0 + seed}))
    write_run(sweep / "standin-hopper-random-v0" / "seed0" / "naive_ft", [("online", 0, "", 5.0, 1)])  # unfinished
    (sweep / "sweep.json").write_text(json.dumps({"command": "python scripts/sweep.py --out demo",
                                                  "online_steps": 10, "eval_every": 5}))
    text = report.sweep_readme(sweep, [ds, sweep / "standin-hopper-random-v0"], (5, 10))
    assert text.startswith("# Sweep `demo`") and "```bash\npython scripts/sweep.py --out demo\n```" in text
    hopper, random = text.split("## `standin/hopper/medium-v0`")[1].split("## `standin/hopper/random-v0`")
    assert "| naive TD3 finetuning | 2 | 50.0 ± 0.0 |" in hopper and "| naive TD3 finetuning | 0.50 | 0.70 | 10 / 20 | 30 / 40 |" in hopper
    assert "| naive TD3 finetuning | – | – | 20.5 | – | 40.5 |" in hopper  # fifths of 10 steps: evaluations at 5, 10
    assert "../../sweep_demo_standin-hopper-medium-v0.png" in hopper
    assert "No finetuning run of this dataset has finished yet." in random
    assert all(len(line) <= 120 for line in text.splitlines() if not line.startswith(("|", "python", "Made by", "Agents")))


@pytest.fixture(scope="module")
def plain_runs(pretrained, tmp_path_factory):
    """A folder of runs made without the sweep: two naive_ft seeds from the suite's agent, one with other flags."""
    from conftest import run_script

    runs = tmp_path_factory.mktemp("plain_runs")
    agent = str(pretrained / "offline" / "checkpoint.pt")
    for name, seed, noise in (("a", "0", "0.1"), ("b", "1", "0.1"), ("c", "0", "0.3")):
        run_script("naive_ft.py", "--checkpoint", agent, "--online-steps", "100", "--eval-every", "50",
                   "--eval-episodes", "2", "--batch-size", "64", "--seed", seed, "--expl-noise", noise,
                   "--runs-dir", str(runs), "--run-name", name)
    return runs


def report_runs(*argv):
    import subprocess

    return subprocess.run([sys.executable, str(ROOT / "scripts" / "report.py"), *map(str, argv)], capture_output=True,
                          text=True)


def test_report_of_one_run_and_of_a_folder_of_runs(plain_runs, tmp_path):
    """Any run directories: a table (step-0 score, dip, recovery, final score) per script and setting, and a PNG."""
    if not os.environ.get("CI"):  # CI installs it: there this test must run
        pytest.importorskip("matplotlib", reason='the curves need matplotlib: pip install -e ".[plot]"')
    proc = report_runs(plain_runs / "a", "--out", tmp_path / "one")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((plain_runs / "a" / "summary.json").read_text())
    rows = (tmp_path / "one.md").read_text().splitlines()[2:]
    assert rows == [f"| naive_ft on test/hopper/tiny-v0 | 1 | {summary['step0_score']:.1f} | {summary['dip']:.1f} | "
                    f"{'never' if summary['recovery_steps'] is None else format(summary['recovery_steps'], ',')} | "
                    f"{summary['final_score']:.1f} |"]
    assert (tmp_path / "one.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    proc = report_runs(plain_runs, "--out", tmp_path / "all", "--no-plots")  # a folder: every run below it
    assert proc.returncode == 0, proc.stderr
    rows = [r.split(" | ")[:2] for r in (tmp_path / "all.md").read_text().splitlines()[2:]]
    assert rows == [["| naive_ft on test/hopper/tiny-v0 [--expl-noise 0.1]", "2"],  # seeds 0 and 1: one setting
                    ["| naive_ft on test/hopper/tiny-v0 [--expl-noise 0.3]", "1"]]


def test_report_bad_paths_are_one_line(tmp_path):
    for path, message in [(tmp_path / "none", "is not a directory"), (tmp_path, "holds no run")]:
        proc = report_runs(path)
        assert proc.returncode == 1 and proc.stderr.strip() == f"error: {path} {message}" + (
            " (give run directories, or folders holding runs)" if "directory" in message else
            " (no args.json in it or below it)"), proc.stderr
