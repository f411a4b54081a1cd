"""scripts/sweep.py with the local launcher on the tiny dataset: layout, one agent per (dataset, seed), rerun redoes
nothing, an interrupted sweep resumes to the files of an uninterrupted one, agents are never mixed, bad grids."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT, TINY_ID, read_metrics

import td3_bc

SWEEP = ROOT / "scripts" / "sweep.py"
GRID = ["--methods", "naive_ft", "conservative_ft", "--dataset-ids", TINY_ID, "--seeds", "0", "1",
        "--offline-steps", "50", "--online-steps", "100", "--eval-every", "50", "--workers", "2"]
RUNS = ("naive_ft", "conservative_ft")


def sweep(*argv, check=True):
    proc = subprocess.run([sys.executable, str(SWEEP), *argv], capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"sweep failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def group(out, seed):
    return out / TINY_ID.replace("/", "-") / f"seed{seed}"


def run_files(out):
    """Every run's small files, wall-clock columns dropped: what a sweep's tables are made of."""
    files = {}
    for seed in (0, 1):
        for name in RUNS:
            d = group(out, seed) / name
            files[(seed, name)] = (read_metrics(d / "metrics.csv"), (d / "episodes.csv").read_text(),
                                   (d / "summary.json").read_text())
    return files


@pytest.fixture(scope="module")
def whole(minari_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "whole"
    proc = sweep(*GRID, "--out", str(out))
    return out, proc.stdout


def test_layout_agents_and_rerun(whole):
    out, stdout = whole
    assert "sweep: all 4 finetuning runs finished" in stdout
    agents = []
    for seed in (0, 1):
        g = group(out, seed)
        assert sorted(p.name for p in g.iterdir()) == ["conservative_ft", "naive_ft", "pretrain"]
        agent = td3_bc.weights_sha256(torch.load(g / "pretrain" / "checkpoint.pt", weights_only=False))
        agents.append(agent)
        for name in RUNS:
            info = json.loads((g / name / "args.json").read_text())
            assert info["checkpoint_sha256"] == agent  # both methods start from the group's agent
            assert info["args"]["seed"] == seed and info["args"]["threads"] == 1
            assert info["args"]["online_steps"] == 100 and info["args"]["offline_steps"] == 0
    assert agents[0] != agents[1]  # seeds vary the pretrained agent too
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and "logs" not in p.parts}
    again = sweep(*GRID, "--out", str(out))
    assert "4 finetuning runs, 4 already finished" in again.stdout and "starting" not in again.stdout
    after = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and "logs" not in p.parts}
    assert after == {**before, out / "sweep.json": after[out / "sweep.json"]}


def test_interrupted_sweep_resumes_to_the_same_files(whole, tmp_path):
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(SWEEP), *GRID, "--out", str(out)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    dirs = [group(out, s) / n for s in (0, 1) for n in RUNS]
    while not (any((d / "summary.json").exists() for d in dirs)  # kill once a run has finished and another
               and any((d / "args.json").exists() and not (d / "summary.json").exists() for d in dirs)):  # started
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and every run it started
    proc.wait()
    done = {(s, n): (group(out, s) / n / "metrics.csv").read_bytes() for s in (0, 1) for n in RUNS
            if (group(out, s) / n / "summary.json").exists()}
    assert 0 < len(done) < 4
    rerun = sweep(*GRID, "--out", str(out))
    assert f"{len(done)} already finished" in rerun.stdout and "resuming" in rerun.stdout
    for (s, n), metrics in done.items():  # finished runs untouched
        assert (group(out, s) / n / "metrics.csv").read_bytes() == metrics
    assert run_files(out) == run_files(whole[0])


def test_a_missing_agent_is_pretrained_again_and_must_match(whole, tmp_path):
    """As in a fresh checkout of committed run files: no checkpoints. Removing one finished run makes the sweep
    pretrain the agent again (same seed, same machine: same weights) and redo only that run."""
    out = tmp_path / "copy"
    shutil.copytree(whole[0], out)
    for p in out.rglob("*.pt"):
        p.unlink()
    shutil.rmtree(group(out, 1) / "naive_ft")
    proc = sweep(*GRID, "--out", str(out))
    assert "3 already finished" in proc.stdout and f"resuming {group(out, 1) / 'pretrain'}" in proc.stdout
    assert run_files(out) == run_files(whole[0])
    # a run finetuned from another agent is refused
    info = json.loads((group(out, 0) / "naive_ft" / "args.json").read_text())
    info["checkpoint_sha256"] = "0" * 64
    (group(out, 0) / "naive_ft" / "args.json").write_text(json.dumps(info))
    proc = sweep(*GRID, "--out", str(out), check=False)
    assert proc.returncode != 0 and proc.stderr.strip().startswith(f"error: {group(out, 0)} mixes runs finetuned "
                                                                   f"from different agents")
    # an agent pretrained again that is not the one a finished run started from (another CPU model, say): the
    # group's other runs do not start, and the message names both CPUs
    shutil.rmtree(group(out, 0))
    for p in (group(out, 1) / "pretrain").glob("*.pt"):
        p.unlink()
    shutil.rmtree(group(out, 1) / "naive_ft")
    info = json.loads((group(out, 1) / "conservative_ft" / "args.json").read_text())
    assert info["meta"]["cpu"] == td3_bc.cpu_name()  # recorded by every run
    info["checkpoint_sha256"], info["meta"]["cpu"] = "0" * 64, "AuthenticAMD Some Other CPU"
    (group(out, 1) / "conservative_ft" / "args.json").write_text(json.dumps(info))
    proc = sweep(*GRID, "--out", str(out), check=False)
    assert proc.returncode != 0 and not (group(out, 1) / "naive_ft").exists()
    assert f"FAILED {group(out, 1)}: the pretrained agent" in proc.stdout
    assert f"made on {td3_bc.cpu_name()}" in proc.stdout and "ran on AuthenticAMD Some Other CPU" in proc.stdout


def test_dry_run_prints_as_to_start_only_what_would_start(whole, tmp_path):
    """As in a fresh checkout (no checkpoints): a group with a missing run shows its agent's pretraining and that run;
    a finished group's agent is marked not needed (the sweep does not pretrain it again), its runs done."""
    out = tmp_path / "dry"
    shutil.copytree(whole[0], out)
    for p in out.rglob("*.pt"):
        p.unlink()
    shutil.rmtree(group(out, 1) / "naive_ft")
    lines = [line for line in sweep(*GRID, "--out", str(out), "--dry-run").stdout.splitlines() if sys.executable in line]
    assert len(lines) == 6
    to_start = [line for line in lines if line.startswith(sys.executable)]
    assert len(to_start) == 2 and to_start[0] == f"{sys.executable} {ROOT / 'algorithms' / 'td3_bc.py'} --resume " \
        f"{group(out, 1) / 'pretrain'}" and f"--runs-dir {group(out, 1)} --run-name naive_ft" in to_start[1]
    assert [line.split(" ")[0] for line in lines if str(group(out, 0)) in line] == ["not", "done:", "done:"]
    proc = sweep(*GRID, "--out", str(out))  # and the sweep does just that
    assert f"resuming {group(out, 1) / 'pretrain'}" in proc.stdout and str(group(out, 0)) not in proc.stdout


def test_a_group_whose_agent_came_from_another_cpu_is_skipped_before_pretraining(whole, tmp_path):
    """Committed runs of an agent pretrained on another CPU model: pretraining it here would give another agent, so
    the group is skipped with one line (nothing pretrained) while the other groups go on; the sweep exits non-zero."""
    out = tmp_path / "foreign"
    shutil.copytree(whole[0], out)
    for p in out.rglob("*.pt"):
        p.unlink()
    for seed in (0, 1):
        shutil.rmtree(group(out, seed) / "naive_ft")
    info = json.loads((group(out, 1) / "pretrain" / "args.json").read_text())
    info["meta"]["cpu"] = "AuthenticAMD Some Other CPU"
    (group(out, 1) / "pretrain" / "args.json").write_text(json.dumps(info))
    skip = (f"{group(out, 1)}: its agent was made on AuthenticAMD Some Other CPU and this machine is "
            f"{td3_bc.cpu_name()}; pretrained here it would be another agent than the one conservative_ft started from")
    dry = sweep(*GRID, "--out", str(out), "--dry-run")
    assert f"skipped: {skip}" in dry.stdout and str(group(out, 1) / "naive_ft") not in dry.stdout
    proc = sweep(*GRID, "--out", str(out), check=False)
    assert proc.returncode == 1 and f"sweep: skipping {skip}" in proc.stdout
    assert f"{group(out, 1) / 'pretrain'}" not in proc.stdout.replace(f"skipping {skip}", "")  # not pretrained
    assert not (group(out, 1) / "pretrain" / "checkpoint.pt").exists() and not (group(out, 1) / "naive_ft").exists()
    assert f"could not start: {group(out, 1) / 'naive_ft'}" in proc.stdout
    redone, first = group(out, 0) / "naive_ft", group(whole[0], 0) / "naive_ft"  # group 0 went on
    assert read_metrics(redone / "metrics.csv") == read_metrics(first / "metrics.csv")
    assert (redone / "summary.json").read_text() == (first / "summary.json").read_text()
    # --cross-cpu (this machine computes like "that one"): the agent is pretrained again, its weight hash matches the
    # one the group's runs recorded, and the missing run starts from it
    dry = sweep(*GRID, "--out", str(out), "--dry-run", "--cross-cpu")
    assert "skipped:" not in dry.stdout and f"{sys.executable} {ROOT / 'algorithms' / 'td3_bc.py'} --resume " \
        f"{group(out, 1) / 'pretrain'}" in dry.stdout.splitlines()
    proc = sweep(*GRID, "--out", str(out), "--cross-cpu")
    assert f"resuming {group(out, 1) / 'pretrain'}" in proc.stdout and "skipping" not in proc.stdout
    redone, first = group(out, 1) / "naive_ft", group(whole[0], 1) / "naive_ft"
    assert read_metrics(redone / "metrics.csv") == read_metrics(first / "metrics.csv")


def test_a_part_of_the_grid_runs_alone_and_keeps_the_command(whole, tmp_path):
    """Fewer seeds (the groups one CPU model can continue, say) or fewer methods: only those runs are planned, and
    sweep.json keeps the whole grid's command, the one the report's tables name."""
    out = tmp_path / "part"
    shutil.copytree(whole[0], out)
    recorded = json.loads((out / "sweep.json").read_text())
    seeds = GRID.index("--seeds")
    part = [*GRID[:seeds + 1], "1", *GRID[seeds + 3:]]
    proc = sweep(*part, "--out", str(out))
    assert "sweep: 2 finetuning runs, 2 already finished" in proc.stdout
    assert f"3 of the 6 runs of {out / 'sweep.json'}" in proc.stdout
    assert json.loads((out / "sweep.json").read_text()) == recorded
    assert recorded["command"].endswith("--seeds 0 1 " + " ".join(GRID[seeds + 3:]) + f" --out {whole[0]}")
    methods = GRID.index("--methods")  # fewer methods (some runs on another core, say): likewise
    part = [*GRID[:methods + 1], "conservative_ft", *GRID[methods + 3:]]
    proc = sweep(*part, "--out", str(out))
    assert "sweep: 2 finetuning runs, 2 already finished" in proc.stdout
    assert f"4 of the 6 runs of {out / 'sweep.json'}" in proc.stdout
    assert json.loads((out / "sweep.json").read_text()) == recorded


def test_a_part_that_adds_seeds_records_the_command_of_the_whole_grid(whole, tmp_path):
    """Seeds added in a later part (another session, say): sweep.json's command names every seed, so the report's
    command makes the whole grid."""
    out = tmp_path / "more"
    shutil.copytree(whole[0], out)
    seeds = GRID.index("--seeds")
    sweep(*GRID[:seeds + 1], "2", *GRID[seeds + 3:], "--out", str(out))
    recorded = json.loads((out / "sweep.json").read_text())
    datasets = GRID.index("--dataset-ids")  # this part's --dataset-ids and --seeds give way to the whole grid's
    assert recorded["command"] == "python scripts/sweep.py " + " ".join(
        [*GRID[:datasets], *GRID[seeds + 3:], "--out", str(out), "--dataset-ids", TINY_ID, "--seeds", "0", "1", "2"])
    assert {k.split("/")[1] for k in recorded["runs"]} == {"seed0", "seed1", "seed2"}


def test_a_part_that_leaves_the_grid_uneven_keeps_the_command(whole, tmp_path):
    """A new variant for one seed only: the runs are no longer datasets x seeds x runs, so sweep.json keeps the
    command of record (it would otherwise name only the part) and says so."""
    out = tmp_path / "uneven"
    shutil.copytree(whole[0], out)
    recorded = json.loads((out / "sweep.json").read_text())
    seeds = GRID.index("--seeds")
    proc = sweep(*GRID[:seeds + 1], "1", *GRID[seeds + 3:], "--variant", "b2=--beta-start 2", "--out", str(out))
    assert f"note: {out / 'sweep.json'} keeps its command" in proc.stdout
    after = json.loads((out / "sweep.json").read_text())
    assert after["command"] == recorded["command"] and "seed1/conservative_ft-b2" in "\n".join(after["runs"])


def test_union_command_only_for_one_grid(monkeypatch):
    """A command of record is rebuilt only when the runs are datasets x seeds x runs, all made by this command; else
    None (the old one stays)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import sweep as sweep_module

    monkeypatch.setattr(sys, "argv", ["sweep.py", "--seeds", "1", "--dataset-ids", "a/b", "--variant", "x=--alpha 3"])
    runs = {f"{d.replace('/', '-')}/seed{s}/{n}": ["--dataset-id", d] if n == "pretrain" else []
            for d in ("a/b", "c/d") for s in (0, 1) for n in ("pretrain", "naive_ft")}
    mine = {k: f for k, f in runs.items() if k.startswith("a-b/seed1/")}
    assert sweep_module.union_command(runs, mine) == \
        "python scripts/sweep.py --variant 'x=--alpha 3' --dataset-ids a/b c/d --seeds 0 1"
    # one grid, but with an earlier part's method that this command does not make: its command would not make it all
    other = {**runs, **{f"{d}/seed{s}/td3_bc": [] for d in ("a-b", "c-d") for s in (0, 1)}}
    assert sweep_module.union_command(other, mine) is None
    del runs["c-d/seed0/naive_ft"]
    assert sweep_module.union_command(runs, mine) is None


@pytest.mark.parametrize("argv, message", [
    (["--methods", "naive_ft", "sac"], "error: unknown method(s) ['sac']; choose from td3_bc, naive_ft"),
    (["--dataset-ids", "test/none/missing-v0"], "error: dataset(s) test/none/missing-v0 not found under"),
    (["--variant", "x=--no-such-flag"], "error: --variant x='--no-such-flag': no listed method accepts --no-such-flag"),
    (["--variant", "bad name=--seed 1"], "error: --variant 'bad name=--seed 1': expected NAME=FLAGS"),
    (["--method-flags", "td3_bc=--alpha 1"], "error: --method-flags for ['td3_bc'], which is not among --methods"),
    (["--variant", "x=--seed 3"], "error: --variant x='--seed 3': the sweep sets --seed for every run itself"),
    (["--method-flags", "naive_ft=--runs-dir=/tmp --online-steps 5"],
     "error: --method-flags naive_ft='--runs-dir=/tmp --online-steps 5': the sweep sets --online-steps, --runs-dir"),
    (["--seeds", "0", "-1"], "error: --seeds must be in [0, 2**32 - 1], got 0 -1"),
    (["--online-steps", "300"], "was made by a grid with --online-steps 100, not 300; choose another --out"),
])
def test_bad_grids_fail_before_anything_runs(whole, argv, message):
    out = whole[0]
    before = sorted(str(p) for p in out.rglob("*"))
    proc = sweep(*GRID, "--out", str(out), *argv, check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1 and message in lines[0], proc.stderr
    assert sorted(str(p) for p in out.rglob("*")) == before


def test_variants_apply_where_accepted(minari_root, tmp_path):
    proc = sweep("--methods", "naive_ft", "td3_bc", "balanced_replay", "--dataset-ids", TINY_ID, "--seeds", "0",
                 "--offline-steps", "300", "--out", str(tmp_path / "v"), "--variant", "reset=--reset-optimizers",
                 "--variant", "half=--offline-ratio=0.5", "--variant", "n1=--ensemble-size 1",
                 "--method-flags", "naive_ft=--expl-noise 0.2", "--dry-run")
    lines = proc.stdout.splitlines()
    assert "sweep: variant reset skipped for td3_bc (its --help lacks --reset-optimizers)" in lines
    assert "sweep: variant n1 skipped for naive_ft (its --help lacks --ensemble-size)" in lines
    cmds = {line.split("--run-name ")[1]: line for line in lines if "--run-name" in line}
    assert sorted(cmds) == ["balanced_replay", "balanced_replay-n1", "balanced_replay-reset", "naive_ft",
                            "naive_ft-half", "naive_ft-reset", "pretrain", "td3_bc", "td3_bc-half"]
    assert "--reset-optimizers" in cmds["naive_ft-reset"] and "--offline-ratio=0.5" in cmds["td3_bc-half"]
    assert all("--expl-noise 0.2" in c for n, c in cmds.items() if n.startswith("naive_ft"))
    assert "--expl-noise" not in cmds["td3_bc"] and not (tmp_path / "v").exists()
    # balanced replay's ensemble pretrains its other members in the run, as long as the group's agent trained
    assert all(("--offline-steps 300" if n.startswith(("balanced", "pretrain")) else "--offline-steps 0") in c
               for n, c in cmds.items())


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A real single-node Slurm (munged, slurmctld, slurmd) started by scripts/local_slurm.sh, stopped after."""
    if os.geteuid() != 0:
        pytest.skip("the local Slurm daemons need root")
    missing = [e for e in ("munged", "slurmctld", "slurmd", "sinfo", "squeue", "sbatch") if shutil.which(e) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (apt-get install slurm-wlm munge; .ci/run does this as root)")
    pytest.importorskip("submitit", reason="the Slurm launcher needs submitit (pip install -e '.[sweep]')")
    state = tmp_path_factory.mktemp("slurm")
    script = ROOT / "scripts" / "local_slurm.sh"
    proc = subprocess.run(["bash", str(script), "start", str(state)], capture_output=True, text=True, timeout=120)
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(state / "slurm.conf")
    try:
        assert proc.returncode == 0, proc.stdout + proc.stderr
        yield state
    finally:
        subprocess.run(["bash", str(script), "stop", str(state)], timeout=60)
        os.environ.pop("SLURM_CONF") if old is None else os.environ.__setitem__("SLURM_CONF", old)


def test_slurm_launcher_gives_the_same_runs(whole, slurm, tmp_path):
    out = tmp_path / "slurm_sweep"
    proc = sweep(*GRID, "--out", str(out), "--launcher", "slurm")
    assert "submitted 2 pretraining and 4 finetuning jobs" in proc.stdout
    assert "sweep: all 4 finetuning runs finished" in proc.stdout
    assert run_files(out) == run_files(whole[0])
    again = sweep(*GRID, "--out", str(out), "--launcher", "slurm")
    assert "4 already finished" in again.stdout and "submitted" not in again.stdout


def test_one_sweep_at_a_time_per_out(whole):
    out = whole[0]
    (out / "sweep.lock").write_text(json.dumps({"host": __import__("socket").gethostname(), "pid": os.getpid()}))
    proc = sweep(*GRID, "--out", str(out), check=False)  # this test's process is alive: the lock holds
    assert proc.returncode != 0 and proc.stderr.strip().startswith(f"error: another sweep is running on {out}")
    dead = subprocess.Popen(["true"])
    dead.wait()
    (out / "sweep.lock").write_text(json.dumps({"host": __import__("socket").gethostname(), "pid": dead.pid}))
    proc = sweep(*GRID, "--out", str(out))  # a stale lock (its process is gone) is taken over
    assert "4 already finished" in proc.stdout and not (out / "sweep.lock").exists()


@pytest.mark.parametrize("script", ["td3_bc", "naive_ft", "conservative_ft", "balanced_replay"])
def test_flags_read_from_args_are_the_help_flags(script):
    """The sweep reads each script's flags from its Args dataclass (fast); they must be exactly its --help flags."""
    import re

    sys.path.insert(0, str(ROOT / "scripts"))
    import sweep as sweep_module

    out = subprocess.run([sys.executable, str(ROOT / "algorithms" / f"{script}.py"), "--help"], capture_output=True,
                         text=True, env={**os.environ, "COLUMNS": "200"}).stdout
    assert set(re.findall(r"(--[a-z0-9][a-z0-9-]*)", out)) == sweep_module.script_flags(script)


@pytest.mark.parametrize("gpus, partition", [(0, None), (2, "gpu")])
def test_slurm_job_script_asks_for_what_the_flags_say(tmp_path, gpus, partition):
    """The #SBATCH lines submitit writes from the sweep's parameters (nothing is submitted): no GPU request at 0."""
    submitit = pytest.importorskip("submitit")
    if shutil.which("sbatch") is None:
        pytest.skip("submitit's Slurm executor needs the Slurm client (apt-get install slurm-wlm)")
    sys.path.insert(0, str(ROOT / "scripts"))
    import sweep as sweep_module

    ex = submitit.AutoExecutor(folder=tmp_path, cluster="slurm")
    ex.update_parameters(**sweep_module.slurm_parameters(
        sweep_module.Args(slurm_gpus_per_job=gpus, slurm_partition=partition, slurm_time=30), "41"))
    text = ex._executor._make_submission_file_text("cmd", "uid")
    lines = [line for line in text.splitlines() if line.startswith("#SBATCH")]
    assert "#SBATCH --cpus-per-task=1" in lines and "#SBATCH --time=30" in lines
    assert "#SBATCH --dependency=afterok:41" in lines and "#SBATCH --kill-on-invalid-dep=yes" in lines
    assert [line for line in lines if "gpu" in line and "partition" not in line] == \
        (["#SBATCH --gpus-per-node=2"] if gpus else [])
    assert ("#SBATCH --partition=gpu" in lines) == (partition == "gpu")


def test_queued_slurm_jobs_of_an_earlier_sweep_hold_the_lock(whole, slurm, tmp_path):
    """A sweep stopped while its Slurm jobs still run: a new sweep on that --out is refused until they are gone."""
    job = subprocess.run(["sbatch", "--parsable", "-o", "/dev/null", "--wrap", "sleep 60"], capture_output=True,
                         text=True, check=True).stdout.strip()
    out = tmp_path / "copy"
    shutil.copytree(whole[0], out)
    dead = subprocess.Popen(["true"])
    dead.wait()
    (out / "sweep.lock").write_text(json.dumps({"host": __import__("socket").gethostname(), "pid": dead.pid,
                                                "slurm_jobs": [job]}))
    try:
        proc = sweep(*GRID, "--out", str(out), "--launcher", "slurm", check=False)
        assert proc.returncode != 0 and proc.stderr.strip().startswith(f"error: another sweep is running on {out}")
    finally:
        subprocess.run(["scancel", job])
    for _ in range(50):  # once the job has left the queue the lock is stale
        if job not in subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout.split():
            break
        time.sleep(0.2)
    assert "4 already finished" in sweep(*GRID, "--out", str(out), "--launcher", "slurm").stdout


def test_a_failing_run_is_reported_and_the_others_finish(minari_root, tmp_path):
    out = tmp_path / "fail"
    proc = sweep("--methods", "naive_ft", "conservative_ft", "--dataset-ids", TINY_ID, "--seeds", "0",
                 "--offline-steps", "50", "--online-steps", "100", "--eval-every", "50", "--workers", "2",
                 "--method-flags", "naive_ft=--batch-size 0", "--out", str(out), check=False)
    assert proc.returncode != 0
    assert f"sweep: FAILED {group(out, 0) / 'naive_ft'} (exit 1; log in {out / 'logs'})" in proc.stdout
    assert "sweep: 1 run(s) failed or could not start" in proc.stdout
    assert (group(out, 0) / "conservative_ft" / "summary.json").exists()
    log = (out / "logs" / f"{TINY_ID.replace('/', '-')}__seed0__naive_ft.log").read_text()
    assert "error: --batch-size must be > 0, got 0" in log
