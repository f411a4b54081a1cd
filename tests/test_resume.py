"""Runs survive being killed: `--resume RUN_DIR` continues a SIGKILLed run to the result of an uninterrupted one,
bit for bit (metrics without the wall-clock columns, episodes, summary, every tensor of the final checkpoint);
the NaN guard; datasets without reference scores; one-line errors for runs that cannot be resumed."""
import json
import random
import shutil
import signal
import struct
import subprocess
import sys
import time
import zipfile

import pytest
import torch
from conftest import ALGOS, TINY_ID, collect_episodes, make_dataset, read_metrics, run_script

SHORT = ["--eval-every", "100", "--log-every", "50", "--eval-episodes", "2", "--batch-size", "64", "--hidden", "64"]
# long enough that a kill shortly after the first checkpoint lands mid-run; td3_bc.py runs both phases
RUNS = {
    "td3_bc.py": ["--offline-steps", "400", "--online-steps", "600"],
    "naive_ft.py": ["--online-steps", "1000", "--reset-optimizers"],
    "conservative_ft.py": ["--online-steps", "1000", "--anchor-tau", "0.01", "--beta-rule", "td"],
    # the candidates of the second round: beta_t as a Lagrange multiplier (pi_0's noisy score, computed again on
    # --resume), PROTO's trust region in the critic's target
    "conservative_ft.py@lagrange": ["--online-steps", "1000", "--anchor-tau", "0.005", "--anchor-critic",
                                    "--beta-rule", "lagrange", "--beta-lr", "0.5"],
    # an ensemble of 3 (member 0 from --checkpoint, 1 and 2 pretrained in the run); a ring smaller than the run
    # and than an episode (the current episode is replayed from the checkpoint, not from the ring)
    "balanced_replay.py": ["--ensemble-size", "3", "--offline-steps", "100", "--online-steps", "1000",
                           "--warmup-online-steps", "150", "--warmup-updates", "200", "--online-capacity", "2"],
    # killed while members 1 and 2 pretrain: the checkpoint holds them and member 0 apart
    "balanced_replay.py@offline": ["--ensemble-size", "3", "--offline-steps", "1500", "--online-steps", "300",
                                   "--warmup-online-steps", "100", "--warmup-updates", "50"],
}
# the first progress line printed after a checkpoint from which to pick a random kill time (balanced replay:
# after its warm-up burst, or in its offline phase)
FIRST = {"td3_bc.py": "offline step      100/", "balanced_replay.py": " online step      200/",
         "balanced_replay.py@offline": "offline step      100/"}


def same_run(a, b):
    assert read_metrics(a / "metrics.csv") == read_metrics(b / "metrics.csv")
    assert (a / "episodes.csv").read_text() == (b / "episodes.csv").read_text()
    assert (a / "summary.json").read_text() == (b / "summary.json").read_text()
    ca, cb = (torch.load(x / "checkpoint.pt", weights_only=False) for x in (a, b))
    for key in ("actor", "critic", "actor_target", "critic_target", "pretrained_actor", "anchor", "weight_net"):
        if ca.get(key) is not None:
            assert ca[key].keys() == cb[key].keys()
            for k in ca[key]:
                assert torch.equal(ca[key][k], cb[key][k]), (key, k)
    if ca.get("beta_rule"):  # conservative_ft --beta-rule td: log beta_t
        assert torch.equal(ca["beta_rule"]["log_beta"], cb["beta_rule"]["log_beta"])
    for key in ("actor_opt", "critic_opt", "weight_opt"):
        if key in ca:
            for i, s in ca[key]["state"].items():
                for k in s:
                    assert torch.equal(s[k], cb[key]["state"][i][k]), (key, i, k)


def kill_after_first_checkpoint(script, argv, rng, marker=None):
    """Start a run, wait for its first checkpoint (marker: the progress line printed after it), SIGKILL it a random
    0-1.5 s later; return that delay."""
    proc = subprocess.Popen([sys.executable, str(ALGOS / script), "--threads", "1", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    marker = marker or " online step        0/"
    for line in proc.stdout:
        if marker in line:
            break
    delay = rng.uniform(0.0, 1.5)
    time.sleep(delay)
    assert proc.poll() is None, f"{script} finished before the kill ({delay:.2f} s): make the run longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return delay


@pytest.mark.parametrize("key", list(RUNS))
def test_sigkill_then_resume_is_bit_identical(pretrained, tmp_path, key):
    script = key.split("@")[0]
    ckpt = [] if script == "td3_bc.py" else ["--checkpoint", str(pretrained / "offline" / "checkpoint.pt")]
    argv = ["--dataset-id", TINY_ID, *ckpt, *SHORT, *RUNS[key], "--runs-dir", str(tmp_path)]
    run_script(script, *argv, "--run-name", "whole")
    delay = kill_after_first_checkpoint(script, [*argv, "--run-name", "killed"], random.Random(), FIRST.get(key))
    killed = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=False)
    print(f"killed {delay:.2f} s after the first checkpoint, resuming from {killed['phase']} step {killed['step']}")
    assert not (tmp_path / "killed" / "summary.json").exists(), "killed after the end"
    assert killed["phase"] == ("offline" if key.endswith("@offline") else killed["phase"]), "killed after pretraining"
    # the same kill, then a second kill inside the next checkpoint write: the metrics row of the next checkpoint
    # is on disk, its temporary file half-written, checkpoint.pt still the old one
    shutil.copytree(tmp_path / "killed", tmp_path / "mid_write")
    mid = tmp_path / "mid_write"
    with open(mid / "metrics.csv", "a") as f:
        f.write("online,999999,1.0,2.0\n")
    data = (mid / "checkpoint.pt").read_bytes()
    (mid / "checkpoint.pt.tmp").write_bytes(data[: len(data) // 2])

    for name in ("killed", "mid_write") if script == "naive_ft.py" else ("mid_write",):  # mid_write is killed + more
        proc = run_script(script, "--resume", str(tmp_path / name))
        assert f"resuming from the checkpoint at {killed['phase']} step {killed['step']}" in proc.stdout
        same_run(tmp_path / "whole", tmp_path / name)
    if script != "naive_ft.py":
        return
    # resuming a finished run changes nothing, and says so in args.json
    before = (tmp_path / "killed" / "metrics.csv").read_text()
    run_script(script, "--resume", str(tmp_path / "killed"))
    assert (tmp_path / "killed" / "metrics.csv").read_text() == before
    same_run(tmp_path / "whole", tmp_path / "killed")
    resumes = json.loads((tmp_path / "killed" / "args.json").read_text())["resumes"]
    assert [r["from"] for r in resumes] == [f"{killed['phase']} step {killed['step']}",
                                            f"online step {killed['args']['online_steps']}"]


def test_resume_before_the_first_checkpoint_starts_over(minari_root, tmp_path):
    argv = ["--dataset-id", TINY_ID, *SHORT, "--offline-steps", "200", "--runs-dir", str(tmp_path)]
    run_script("td3_bc.py", *argv, "--run-name", "whole")
    run_script("td3_bc.py", *argv, "--run-name", "early")
    (tmp_path / "early" / "checkpoint.pt").unlink()  # as if killed before step 100
    with open(tmp_path / "early" / "metrics.csv", "a") as f:
        f.write("offline,50,garbage\n")
    proc = run_script("td3_bc.py", "--resume", str(tmp_path / "early"))
    assert "resuming" not in proc.stdout
    assert read_metrics(tmp_path / "whole" / "metrics.csv") == read_metrics(tmp_path / "early" / "metrics.csv")


@pytest.fixture(scope="module")
def finished(pretrained, tmp_path_factory):
    """A finished naive_ft.py run to break in various ways."""
    runs = tmp_path_factory.mktemp("resume_errors")
    run_script("naive_ft.py", "--checkpoint", str(pretrained / "offline" / "checkpoint.pt"), *SHORT,
               "--online-steps", "100", "--runs-dir", str(runs), "--run-name", "ok")
    return runs / "ok"


def broken_copy(finished, tmp_path, edit):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    edit(run)
    return run


def _set(path, key, value):
    if path.suffix == ".json":
        d = json.loads(path.read_text())
        d.pop(key) if value is None else d.__setitem__(key, value)
        path.write_text(json.dumps(d))
    else:
        d = torch.load(path, weights_only=False)
        d.pop(key) if value is None else d.__setitem__(key, value)
        torch.save(d, path)


def _shift_obs(run):
    ckpt = torch.load(run / "checkpoint.pt", weights_only=False)
    ckpt["run"]["obs"] += 1.0
    torch.save(ckpt, run / "checkpoint.pt")


def _edit(run, name, edit):
    """Load a run file (args.json or checkpoint.pt), let `edit` change it in place, write it back."""
    path = run / name
    d = json.loads(path.read_text()) if name == "args.json" else torch.load(path, weights_only=False)
    edit(d)
    path.write_text(json.dumps(d)) if name == "args.json" else torch.save(d, path)


def _flip_a_tensor_byte(run):
    """Flip one bit in the middle of the largest tensor record of checkpoint.pt (the file still loads unchecked)."""
    path = run / "checkpoint.pt"
    with zipfile.ZipFile(path) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    raw = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
    raw[info.header_offset + 30 + name_len + extra_len + info.file_size // 2] ^= 0x10
    path.write_bytes(raw)
    torch.load(path, weights_only=False)  # torch alone does not notice: the CRC check is what finds it


@pytest.mark.parametrize("script, edit, message", [
    ("naive_ft.py", lambda r: shutil.rmtree(r), "no run there (no args.json)"),
    ("naive_ft.py", lambda r: (r / "args.json").write_text('{"args": {"se'), "its args.json is not valid JSON"),
    ("naive_ft.py", lambda r: _set(r / "args.json", "algorithm", None), "its args.json: field 'algorithm' is missing"),
    ("conservative_ft.py", lambda r: None, "that run was made by naive_ft.py; resume it with that script"),
    ("naive_ft.py", lambda r: (r / "checkpoint.pt").write_bytes((r / "checkpoint.pt").read_bytes()[:5000]),
     "error: cannot read checkpoint"),
    ("naive_ft.py", lambda r: _set(r / "checkpoint.pt", "format", None),
     "its checkpoint is format 1 of naive_ft, this script resumes format 4 of naive_ft"),
    ("naive_ft.py", lambda r: (r / "checkpoint.pt").write_bytes(b"not a checkpoint"), "error: cannot read checkpoint"),
    ("naive_ft.py", lambda r: (r / "metrics.csv").write_text("phase\n"),
     "metrics.csv is not what its checkpoint recorded (6 bytes, not "),
    # an editor's byte-order mark, and line endings converted: the rows themselves are unchanged
    ("naive_ft.py", lambda r: (r / "metrics.csv").write_bytes(b"\xef\xbb\xbf" + (r / "metrics.csv").read_bytes()),
     "metrics.csv is not what its checkpoint recorded (its bytes changed)"),
    ("naive_ft.py", lambda r: (r / "episodes.csv").write_text((r / "episodes.csv").read_text().replace("\r\n", "\n")),
     "episodes.csv is not what its checkpoint recorded ("),
    ("naive_ft.py", lambda r: _edit(r, "args.json", lambda d: d["args"].update(no_such_flag=1)),
     "its args.json has flags this script lacks"),
    ("naive_ft.py", lambda r: _set(r / "args.json", "resumes", None), "its args.json: field 'resumes' is missing"),
    ("naive_ft.py", lambda r: _edit(r, "args.json", lambda d: d["args"].update(seed="abc")),
     "its args.json: field 'args.seed' is str, not int"),
    ("naive_ft.py", lambda r: _set(r / "checkpoint.pt", "run", None), "its checkpoint: field 'run' is missing"),
    ("naive_ft.py", lambda r: _set(r / "checkpoint.pt", "args", None), "checkpoint.pt: field 'args' is missing"),
    ("naive_ft.py", lambda r: _edit(r, "checkpoint.pt", lambda d: d["run"].update(n_on="7")),
     "its checkpoint: field 'run.n_on' is str, not int"),
    ("naive_ft.py", lambda r: _edit(r, "checkpoint.pt", lambda d: d["rng"].pop("numpy")),
     "its checkpoint: field 'rng.numpy' is missing"),
    ("naive_ft.py", _flip_a_tensor_byte, "fails its CRC-32 check: the file is damaged"),
    ("naive_ft.py", _shift_obs, "replaying the current episode did not reproduce the checkpointed observation"),
])
def test_resume_errors_are_one_line(finished, tmp_path, script, edit, message):
    """Each fault is one line naming it, exit 1, and a failed resume writes nothing (args.json stays as it was)."""
    run = broken_copy(finished, tmp_path, edit)
    files = lambda: {p.name: p.read_bytes() for p in run.glob("*") if p.name != ".lock"}  # noqa: E731
    before = files()
    proc = run_script(script, "--resume", str(run), check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], \
        proc.stderr
    assert files() == before


@pytest.mark.parametrize("flag, value, saved", [("--seed", "3", "0"), ("--threads", "2", "1"),
                                                ("--online-steps", "200", "100"), ("--reset-optimizers", None, "False")])
def test_resume_flags_must_agree_with_args_json(finished, tmp_path, flag, value, saved):
    run = broken_copy(finished, tmp_path, lambda r: None)
    argv = [flag] if value is None else [flag, value]
    proc = subprocess.run([sys.executable, str(ALGOS / "naive_ft.py"), "--resume", str(run), *argv],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and proc.stderr.strip().startswith(
        f"error: {flag} {value or 'True'} contradicts the resumed run's args.json ({saved})"), proc.stderr


def test_a_flag_added_since_the_run_started_takes_its_default(finished, tmp_path):
    """An args.json written before a flag existed resumes with the flag's default (which keeps the old behaviour),
    and says so in one note line."""
    run = broken_copy(finished, tmp_path, lambda r: _edit(r, "args.json", lambda d: [d["args"].pop(k) for k in
                                                                                     ("wandb_project", "track")]))
    proc = run_script("naive_ft.py", "--resume", str(run))
    assert f"note: --resume {run}: its args.json predates track, wandb_project: their defaults\n" in proc.stdout
    assert read_metrics(run / "metrics.csv") == read_metrics(finished / "metrics.csv")


def test_resume_flags_equal_to_args_json_are_fine(finished, tmp_path):
    """The same values as the run's are no contradiction (and the finished run stays as it was)."""
    run = broken_copy(finished, tmp_path, lambda r: None)
    ok = subprocess.run([sys.executable, str(ALGOS / "naive_ft.py"), "--resume", str(run), "--seed", "0",
                         "--threads", "1"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert read_metrics(run / "metrics.csv") == read_metrics(finished / "metrics.csv")


def test_checkpoint_of_the_old_format_still_loads(pretrained, tmp_path):
    """--checkpoint reads checkpoints written before --resume existed (no format, run or diagnostics RNG state)."""
    ckpt = torch.load(pretrained / "offline" / "checkpoint.pt", weights_only=False)
    for key in ("format", "run"):
        ckpt.pop(key)
    ckpt["rng"].pop("diagnostics")
    torch.save(ckpt, tmp_path / "old.pt")
    proc = run_script("naive_ft.py", "--checkpoint", str(tmp_path / "old.pt"), *SHORT, "--online-steps", "100",
                      "--runs-dir", str(tmp_path), "--run-name", "x")
    new = run_script("naive_ft.py", "--checkpoint", str(pretrained / "offline" / "checkpoint.pt"), *SHORT,
                     "--online-steps", "100", "--runs-dir", str(tmp_path), "--run-name", "y")
    assert proc.returncode == 0 and new.returncode == 0
    assert read_metrics(tmp_path / "x" / "metrics.csv") == read_metrics(tmp_path / "y" / "metrics.csv")


def test_nan_guard_stops_with_one_line_and_keeps_the_checkpoint(pretrained, tmp_path):
    """A critic with huge weights makes the first online critic loss infinite and the actor NaN at its first
    update: the run stops before a NaN action reaches the env, with one line naming the losses and the step window;
    the online step-0 checkpoint stays and resumes (to the same stop)."""
    ckpt = torch.load(pretrained / "offline" / "checkpoint.pt", weights_only=False)
    ckpt["critic"]["layers.2.weight"] *= 1e30
    torch.save(ckpt, tmp_path / "poisoned.pt")
    argv = ["--checkpoint", str(tmp_path / "poisoned.pt"), "--online-steps", "100", "--log-every", "10",
            "--eval-every", "50", "--eval-episodes", "2", "--batch-size", "64", "--runs-dir", str(tmp_path)]
    proc = run_script("naive_ft.py", *argv, "--run-name", "nan", check=False)
    run = tmp_path / "nan"
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: non-finite critic_loss, q_mean, actor_loss") and \
        "action in online steps 1-3: stopped" in lines[0]
    assert f"the last checkpoint (online step 0) is untouched, continue it with --resume {run}" in lines[0]
    assert [r["step"] for r in read_metrics(run / "metrics.csv")] == ["0"]
    assert torch.load(run / "checkpoint.pt", weights_only=False)["step"] == 0
    again = run_script("naive_ft.py", "--resume", str(run), check=False)  # loads, and stops at the same place
    assert again.returncode != 0 and again.stderr.strip() == proc.stderr.strip()
    assert [r["step"] for r in read_metrics(run / "metrics.csv")] == ["0"]
    # a loss that turns non-finite without reaching the actions is caught at the next metrics row, which is logged
    proc = run_script("td3_bc.py", "--checkpoint", str(tmp_path / "poisoned.pt"), "--offline-steps", "30",
                      "--log-every", "10", "--eval-every", "20", "--batch-size", "64", "--runs-dir", str(tmp_path),
                      "--run-name", "offline", check=False)
    assert proc.returncode != 0 and proc.stderr.strip().startswith("error: non-finite critic_loss") and \
        proc.stderr.strip().endswith("in offline steps 1-10: stopped; no checkpoint was written yet")
    assert [r["step"] for r in read_metrics(tmp_path / "offline" / "metrics.csv")] == ["10"]


def test_dataset_without_reference_scores_reports_raw_returns(pretrained, tmp_path):
    make_dataset("test/hopper/noref-v0", collect_episodes(), reference_scores=False)
    proc = run_script("td3_bc.py", "--dataset-id", "test/hopper/noref-v0", "--offline-steps", "100",
                      "--online-steps", "200", *SHORT, "--runs-dir", str(tmp_path), "--run-name", "r")
    assert proc.stdout.count("has no reference scores") == 1
    rows = [r for r in read_metrics(tmp_path / "r" / "metrics.csv") if r["eval_score"]]
    assert rows and all(r["eval_score"] == r["eval_return"] for r in rows)
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    scores = [float(r["eval_return"]) for r in rows if r["phase"] == "online"]
    assert summary["score"] == "raw return" and summary["step0_score"] == pytest.approx(scores[0])
    assert summary["dip"] == pytest.approx(max(0.0, scores[0] - min(scores[1:])))
    with open(tmp_path / "r" / "episodes.csv") as f:
        f.readline()
        for line in f:
            _, ret, _, score = line.strip().split(",")
            assert float(score) == pytest.approx(float(ret))
    assert "has no reference scores" not in run_script(
        "td3_bc.py", "--dataset-id", TINY_ID, "--offline-steps", "1", "--eval-every", "1", "--eval-episodes", "1",
        "--runs-dir", str(tmp_path), "--run-name", "with_refs").stdout


def test_missing_dataset_without_network_is_quick_and_short(minari_root, tmp_path):
    """With the Hub unreachable (not merely HF_HUB_OFFLINE), a missing dataset gets our one line at once."""
    env = {k: v for k, v in __import__("os").environ.items() if k != "HF_HUB_OFFLINE"}
    env["HF_ENDPOINT"] = "http://127.0.0.1:9"
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ALGOS / "td3_bc.py"), "--dataset-id", "test/none/missing-v0",
                           "--runs-dir", str(tmp_path)], capture_output=True, text=True, env=env, timeout=60)
    elapsed = time.perf_counter() - t
    out = (proc.stdout + proc.stderr).strip().splitlines()
    assert proc.returncode != 0 and len(out) <= 5 and elapsed <= 5.0, (elapsed, out)
    assert out[-1].startswith("error: Minari dataset 'test/none/missing-v0' is not available") and \
        "cannot reach 127.0.0.1:9" in out[-1]
