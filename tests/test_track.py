"""--track with the real wandb package, offline (WANDB_MODE=offline, no network): read back what W&B recorded in its
own files. Every metrics row once, at growing steps, with its phase; the config and the summary; a run interrupted
(Ctrl-C) and continued with --resume is the same W&B run, holding the same values as an uninterrupted one. A tracking
failure is one warning line and never stops training. In CI these run (wandb comes with `.[track]`); elsewhere they
skip without it."""
import csv
import json
import os
import signal
import struct
import subprocess
import sys

import pytest
from conftest import ALGOS, read_metrics, run_script

if not os.environ.get("CI"):
    pytest.importorskip("wandb", reason='--track needs wandb: pip install -e ".[track]"')
from wandb.proto import wandb_internal_pb2  # noqa: E402



def env(**extra):
    """This process's environment (the test datasets' path is set by a fixture) with W&B offline and quiet."""
    return {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", **extra}

WALL = ("updates_per_s", "elapsed_s", "_runtime", "_timestamp")  # wall-clock values: the only ones that may differ


def flags(pretrained, runs, name):
    return ["--threads", "1", "--checkpoint", str(pretrained / "offline" / "checkpoint.pt"), "--online-steps", "1000",
            "--eval-every", "500", "--log-every", "100", "--eval-episodes", "2", "--batch-size", "64", "--track",
            "--wandb-project", "tests", "--runs-dir", str(runs), "--run-name", name]


def records(path):
    """The records of a W&B transaction log (run-<id>.wandb): a 7-byte header, then 32 KiB blocks of chunks, each
    with a 7-byte header (CRC, length, type: full, first, middle, last) and part of one protobuf Record."""
    raw, pos, chunk = path.read_bytes(), 7, b""
    assert raw[:4] == b":W&B"
    while pos + 7 <= len(raw):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a chunk header is padding
            pos += 32768 - pos % 32768
            continue
        _, n, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        chunk = raw[pos + 7:pos + 7 + n] if kind in (1, 2) else chunk + raw[pos + 7:pos + 7 + n]
        pos += 7 + n
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            yield record


def recorded(run_dir):
    """Per W&B run file, in order: (run id, run name, config keys, [(step, {key: value})], {summary key: value})."""
    out = []
    for path in sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb")):
        run, config, history, summary = None, set(), [], {}
        for r in records(path):
            kind = r.WhichOneof("record_type")
            if kind == "run":
                run, config = r.run, config | {i.key for i in r.run.config.update}
            elif kind == "history":
                items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
                history.append((r.history.step.num, {k: v for k, v in items.items() if not k.startswith("_")}))
            elif kind == "summary":
                summary.update({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.summary.update})
        out.append((run.run_id, run.display_name, config, history, summary))
    return out


def as_rows(history):
    """W&B's history as metrics.csv rows: {phase/key: value} back to {key: value}, wall-clock values dropped."""
    rows = []
    for _, item in history:
        (phase,) = {k.split("/")[0] for k in item if "/" in k}
        rows.append({"phase": phase, **{k.split("/", 1)[1]: v for k, v in item.items() if "/" in k
                                        and k.split("/", 1)[1] not in WALL}})
    return rows


def csv_rows(run_dir):
    return [{k: (v if k == "phase" else int(v) if k == "step" else float(v)) for k, v in row.items() if v != ""}
            for row in read_metrics(run_dir / "metrics.csv")]


@pytest.fixture(scope="module")
def tracked(pretrained, tmp_path_factory):
    """An uninterrupted tracked run, and the same run interrupted with Ctrl-C after step 100 (900 steps before its end,
    seconds even on a loaded machine), then resumed."""
    runs = tmp_path_factory.mktemp("tracked")
    subprocess.run([sys.executable, str(ALGOS / "naive_ft.py"), *flags(pretrained, runs, "whole")], env=env(),
                   check=True, capture_output=True)
    proc = subprocess.Popen([sys.executable, str(ALGOS / "naive_ft.py"), *flags(pretrained, runs, "cut")], env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,  # Ctrl-C acts even where a
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # background job ignores it
    next(line for line in proc.stdout if "step      100/" in line)
    proc.send_signal(signal.SIGINT)
    proc.communicate()
    assert not (runs / "cut" / "summary.json").exists()
    resumed = subprocess.run([sys.executable, str(ALGOS / "naive_ft.py"), "--resume", str(runs / "cut")], env=env(),
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    return runs


def test_every_row_once_with_config_and_summary(tracked):
    run_dir = tracked / "whole"
    ((run_id, name, config, history, summary),) = recorded(run_dir)
    info = json.loads((run_dir / "args.json").read_text())
    assert run_id == info["wandb_id"] and name == "whole" and {"seed", "online_steps", "meta"} <= config
    steps = [s for s, _ in history]
    assert steps == sorted(set(steps)) and steps == [int(r["step"]) for r in read_metrics(run_dir / "metrics.csv")]
    assert as_rows(history) == [{k: v for k, v in r.items() if k not in WALL} for r in csv_rows(run_dir)]
    assert {k: summary[k] for k in ("dip", "final_score")} == \
        {k: json.loads((run_dir / "summary.json").read_text())[k] for k in ("dip", "final_score")}


def test_a_resumed_run_is_the_same_w_and_b_run_with_the_same_values(tracked):
    first, second = recorded(tracked / "cut")  # one W&B file per process
    assert first[0] == second[0] == json.loads((tracked / "cut" / "args.json").read_text())["wandb_id"]
    steps = [s for s, _ in first[3] + second[3]]
    assert steps == sorted(set(steps))  # the resumed process logs none of the rows W&B already has
    (whole,) = recorded(tracked / "whole")
    assert as_rows(first[3] + second[3]) == as_rows(whole[3])  # resume is exact, so W&B's record is too
    assert second[4]["dip"] == whole[4]["dip"]


def test_a_tracking_failure_is_one_warning_and_the_run_goes_on(pretrained, tmp_path):
    """W&B cannot start (an invalid mode): one warning line, the run trains to the same files as without --track."""
    argv = flags(pretrained, tmp_path, "failed")
    argv[argv.index("--online-steps") + 1] = "200"  # short: nothing here depends on the run's length
    proc = subprocess.run([sys.executable, str(ALGOS / "naive_ft.py"), *argv], capture_output=True, text=True,
                          env=env(WANDB_MODE="no-such-mode"))
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stdout.splitlines() if line.startswith("warning: --track")]
    assert len(warnings) == 1 and "the run goes on without W&B" in warnings[0]
    plain = [a for a in argv if a != "--track"]
    run_script("naive_ft.py", *plain[2:-1], "plain")
    assert read_metrics(tmp_path / "failed" / "metrics.csv") == read_metrics(tmp_path / "plain" / "metrics.csv")
    assert csv  # the CSVs stay the record
