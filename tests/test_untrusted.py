"""Nothing read from disk is trusted (issue 42): a checkpoint that would run code when unpickled is refused by every
loader, marker file absent; one process per run directory; a restart before the first checkpoint checks the agent
file against args.json; a full disk is one line and keeps the last checkpoint; every metrics row reaches the file at
once; --run-name stays inside --runs-dir. (Edited or damaged run files: tests/test_resume.py.)"""
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, TINY_ID, run_script

import naive_ft

SHORT = ["--eval-every", "50", "--eval-episodes", "2", "--batch-size", "64"]


class Payload:
    """Unpickling this runs `touch MARKER`: what a shared checkpoint could do to whoever loads it unsafely."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def malicious(pretrained, tmp_path):
    """A real agent with one extra pickled object; the marker appears if anything unpickles it."""
    marker = tmp_path / "marker"
    ckpt = torch.load(pretrained / "offline" / "checkpoint.pt", weights_only=False)
    ckpt["note"] = Payload(marker)
    torch.save(ckpt, tmp_path / "agent.pt")
    return tmp_path / "agent.pt", marker


def test_the_payload_is_live(malicious):
    """The test's own control: an unsafe load does run it, so the marker's absence below means something."""
    path, marker = malicious
    torch.load(path, weights_only=False)
    assert marker.exists()


def refused(proc, marker, path):
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stdout + proc.stderr
    assert lines[0] == (f"error: cannot read checkpoint {path}: refused: it asks to run posix.system when loaded (a "
                        f"checkpoint of these scripts holds only tensors, plain data and numpy arrays; nothing in it "
                        f"was run)"), lines[0]
    assert not marker.exists()


@pytest.mark.parametrize("script", ["td3_bc.py", "naive_ft.py", "conservative_ft.py", "balanced_replay.py"])
def test_every_script_refuses_a_checkpoint_that_runs_code(malicious, tmp_path, script):
    path, marker = malicious
    refused(run_script(script, "--checkpoint", str(path), *SHORT, "--online-steps", "2000", "--runs-dir",
                       str(tmp_path / "runs"), check=False), marker, path)
    assert not (tmp_path / "runs").exists()  # refused before anything was written


def test_resume_refuses_it_in_the_run_directory_and_through_args_json(pretrained, malicious, tmp_path):
    """As the run's own checkpoint.pt, and as the agent an args.json (killed before its first checkpoint) names."""
    path, marker = malicious
    run_script("naive_ft.py", "--checkpoint", str(pretrained / "offline" / "checkpoint.pt"), *SHORT,
               "--online-steps", "50", "--runs-dir", str(tmp_path), "--run-name", "run")
    run = tmp_path / "run"
    shutil.copy(path, run / "checkpoint.pt")
    refused(run_script("naive_ft.py", "--resume", str(run), check=False), marker, run / "checkpoint.pt")
    (run / "checkpoint.pt").unlink()
    info = json.loads((run / "args.json").read_text())
    info["args"]["checkpoint"] = str(path)
    (run / "args.json").write_text(json.dumps(info))
    refused(run_script("naive_ft.py", "--resume", str(run), check=False), marker, path)


def test_report_hash_and_the_sweep_refuse_it(malicious, minari_root, tmp_path):
    path, marker = malicious
    report = subprocess.run([sys.executable, str(ROOT / "scripts" / "report.py"), "--hash", str(path)],
                            capture_output=True, text=True)
    refused(report, marker, path)
    out = tmp_path / "sweep"
    agent = out / TINY_ID.replace("/", "-") / "seed0" / "pretrain" / "checkpoint.pt"
    agent.parent.mkdir(parents=True)
    shutil.copy(path, agent)
    sweep = subprocess.run([sys.executable, str(ROOT / "scripts" / "sweep.py"), "--methods", "naive_ft",
                            "--dataset-ids", TINY_ID, "--seeds", "0", "--offline-steps", "50", "--online-steps", "50",
                            "--out", str(out), "--dry-run"], capture_output=True, text=True)
    refused(sweep, marker, agent)


def test_checkpoints_the_scripts_write_load_safely(pretrained):
    """No allowlist beyond numpy's arrays is needed: every checkpoint of the suite's agent loads with weights_only."""
    from offline_data import load_checkpoint

    ckpt = load_checkpoint(str(pretrained / "offline" / "checkpoint.pt"), None)
    assert ckpt["rng"]["numpy"][1].dtype.name == "uint32" and ckpt["obs_mean"].dtype.name == "float32"


def test_one_process_per_run_directory(pretrained, tmp_path):
    """A second process on a running run's directory gets one line naming the first one's pid, and writes nothing."""
    first = subprocess.Popen([sys.executable, str(ROOT / "algorithms" / "naive_ft.py"), "--threads", "1",
                              "--checkpoint", str(pretrained / "offline" / "checkpoint.pt"), *SHORT,
                              "--online-steps", "100000", "--runs-dir", str(tmp_path), "--run-name", "run"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run = tmp_path / "run"
    try:
        next(line for line in first.stdout if "online step" in line)  # running, with its first checkpoint
        files = {p.name: p.read_bytes() for p in run.glob("*.*")}
        second = run_script("naive_ft.py", "--resume", str(run), check=False)
        assert second.returncode == 1 and second.stderr.strip() == \
            f"error: {run} is in use by process {first.pid}", second.stderr
        assert json.loads((run / "args.json").read_text())["resumes"] == []  # the second one wrote nothing
        assert files["args.json"] == (run / "args.json").read_bytes()
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    fd = os.open(run / ".lock", os.O_RDWR)
    os.lockf(fd, os.F_TLOCK, 0)  # the kernel released the lock with the killed process: --resume can continue it
    os.close(fd)


def test_a_restart_before_the_first_checkpoint_checks_the_agent(pretrained, tmp_path):
    """Killed before its first checkpoint, a run starts over from --checkpoint: only from the agent args.json recorded."""
    run_script("naive_ft.py", "--checkpoint", str(pretrained / "offline" / "checkpoint.pt"), *SHORT,
               "--online-steps", "50", "--runs-dir", str(tmp_path), "--run-name", "other")
    agent = tmp_path / "agent.pt"
    shutil.copy(pretrained / "offline" / "checkpoint.pt", agent)
    run_script("naive_ft.py", "--checkpoint", str(agent), *SHORT, "--online-steps", "50", "--runs-dir",
               str(tmp_path), "--run-name", "run")
    run = tmp_path / "run"
    for name in ("checkpoint.pt", "metrics.csv", "episodes.csv", "summary.json"):
        (run / name).unlink()  # as if killed before its first checkpoint
    shutil.copy(tmp_path / "other" / "checkpoint.pt", agent)  # another agent under the recorded path
    before = (run / "args.json").read_bytes()
    proc = run_script("naive_ft.py", "--resume", str(run), check=False)
    assert proc.returncode == 1 and proc.stderr.strip() == (
        f"error: --resume {run}: --checkpoint {agent} holds other weights than those args.json recorded (sha256); "
        f"restore that file or start a new run"), proc.stderr
    assert (run / "args.json").read_bytes() == before
    shutil.copy(pretrained / "offline" / "checkpoint.pt", agent)  # the right agent back: the run starts over
    ok = run_script("naive_ft.py", "--resume", str(run))
    assert ok.returncode == 0 and (run / "summary.json").exists()


def test_a_full_disk_is_one_line_and_keeps_the_last_checkpoint(tmp_path):
    """This process's temporary file lands on /dev/full: ENOSPC, one line naming the path, the old file intact."""
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"the last checkpoint")
    (tmp_path / f"checkpoint.pt.{os.getpid()}.tmp").symlink_to("/dev/full")
    with pytest.raises(SystemExit) as e:
        naive_ft.atomic_save(path, {"weights": torch.zeros(1000)})
    assert str(e.value) == f"error: cannot write {path}: No space left on device; the last checkpoint.pt is intact"
    assert path.read_bytes() == b"the last checkpoint" and list(tmp_path.iterdir()) == [path]


def test_every_metrics_row_reaches_the_file_at_once(pretrained, tmp_path):
    """Rows between checkpoints are on disk as soon as their progress line is printed (killed right after it)."""
    proc = subprocess.Popen([sys.executable, str(ROOT / "algorithms" / "naive_ft.py"), "--threads", "1",
                             "--checkpoint", str(pretrained / "offline" / "checkpoint.pt"), "--log-every", "10",
                             "--eval-every", "100000", "--eval-episodes", "1", "--batch-size", "64",
                             "--online-steps", "100000", "--runs-dir", str(tmp_path), "--run-name", "run"],
                            stdout=subprocess.PIPE, text=True)
    next(line for line in proc.stdout if "online step       30/" in line)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    steps = [line.split(",")[1] for line in (tmp_path / "run" / "metrics.csv").read_text().splitlines()[1:]]
    assert steps[:4] == ["0", "10", "20", "30"]


@pytest.mark.parametrize("name", ["../escape", "/tmp/abs", "a/b", "..", "."])
def test_run_name_is_one_folder_name(pretrained, tmp_path, name):
    proc = run_script("naive_ft.py", "--checkpoint", str(pretrained / "offline" / "checkpoint.pt"), "--run-name", name,
                      "--runs-dir", str(tmp_path / "runs"), check=False)
    assert proc.returncode == 1 and proc.stderr.strip() == (
        f"error: --run-name must be one folder name (no / or ..), got {name!r}; see --runs-dir"), proc.stderr
    assert not (tmp_path / "escape").exists() and not (tmp_path / "runs").exists()


def test_run_files_never_reach_git():
    ignored = subprocess.run(["git", "check-ignore", "runs/x/.lock", "runs/x/checkpoint.pt.123.tmp"], cwd=ROOT,
                             capture_output=True, text=True).stdout.split()
    assert ignored == ["runs/x/.lock", "runs/x/checkpoint.pt.123.tmp"]
