"""The study with one command: for each (dataset, seed) pretrain one TD3+BC agent, then finetune every method and
variant from that same agent, on this machine or through Slurm. Run it again with the same arguments to continue:
finished runs are kept, interrupted ones resume exactly (`--resume`), missing ones start. A part of the grid (fewer
datasets or seeds, e.g. the groups this CPU model can continue) runs alone and keeps OUT/sweep.json's command.

    python scripts/sweep.py --methods naive_ft conservative_ft --dataset-ids standin/hopper/medium-v0 \\
        --seeds 0 1 2 --out benchmarks/sweeps/example
    python scripts/sweep.py ... --variant reset=--reset-optimizers --variant "online-only=--offline-ratio 0"

Layout: OUT/sweep.json (the grid), OUT/<dataset id, / -> ->/seed<S>/pretrain/ and .../seed<S>/<method>[-<variant>]/
(run directories of the algorithm scripts; their logs in OUT/logs/). Every run gets `--threads 1`. Seeds vary the
pretrained agent too. Checkpoints and online rows are git-ignored, so under benchmarks/ a finished run commits as
its small files (args.json, metrics.csv, episodes.csv, summary.json); a missing agent is pretrained again (same
seed, threads and CPU model => the same weights), and runs finetuned from a different agent are refused.
"""
from __future__ import annotations

import ast
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro

ROOT = Path(__file__).resolve().parents[1]
ALGOS = ROOT / "algorithms"
METHODS = ("td3_bc", "naive_ft", "conservative_ft", "balanced_replay")
SWEEP_SETS = {"--checkpoint", "--dataset-id", "--env", "--seed", "--offline-steps", "--online-steps", "--eval-every",
              "--runs-dir", "--run-name", "--resume"}  # every run's: its group's agent, seed, steps and place


@dataclass
class Args:
    methods: tuple[str, ...] = ("td3_bc", "naive_ft", "conservative_ft", "balanced_replay")
    """finetuning methods: td3_bc (TD3+BC continued online), naive_ft, conservative_ft, balanced_replay"""
    dataset_ids: tuple[str, ...] = ("mujoco/hopper/medium-v0",)
    """Minari dataset ids; each (dataset, seed) gets its own pretrained agent"""
    seeds: tuple[int, ...] = (0, 1, 2)
    """seeds of the pretraining and of every finetuning run from it"""
    offline_steps: int = 100_000
    """TD3+BC pretraining steps of each agent"""
    online_steps: int = 100_000
    """online steps of each finetuning run"""
    eval_every: int = 5_000
    """evaluation (and checkpoint) interval of every run"""
    out: str = "runs/sweep"
    """the sweep directory (may lie under benchmarks/: its small run files are committed, checkpoints ignored)"""
    workers: int = 0
    """runs at a time with the local launcher (0: one per CPU core); each run uses one thread"""
    launcher: Literal["local", "slurm"] = "local"
    """local: subprocesses on this machine; slurm: sbatch through submitit (pip install -e ".[sweep]")"""
    variant: Annotated[tuple[str, ...], tyro.conf.UseAppendAction] = ()
    """NAME=FLAGS, repeatable: also run each listed method whose --help has all FLAGS, as <method>-<NAME> (not the
    flags the sweep sets for every run: --checkpoint, --dataset-id, --env, --seed, --offline-steps, --online-steps,
    --eval-every, --runs-dir, --run-name, --resume)"""
    method_flags: Annotated[tuple[str, ...], tyro.conf.UseAppendAction] = ()
    """METHOD=FLAGS, repeatable: extra flags for every run of one method (e.g. balanced replay's warm-up sizes; not
    the flags the sweep sets, as --variant)"""
    slurm_partition: str | None = None
    """Slurm partition (None: the cluster's default partition)"""
    slurm_time: int = 240
    """Slurm time limit of each job, in minutes"""
    slurm_gpus_per_job: int = 0
    """GPUs per Slurm job (0: no GPU request)"""
    cross_cpu: bool = False
    """re-make the missing agents of another CPU model (else skipped) on a machine that computes like it (README)"""
    dry_run: bool = False
    """print each run's command and start none; prefixes: done, not needed (agent of finished runs), skipped"""


@dataclass
class Run:
    name: str  # pretrain, or <method>[-<variant>]
    script: str
    group: Path  # OUT/<dataset>/seed<S>
    flags: list[str]  # the script's flags for a new run; {group} stands for the group's directory

    @property
    def dir(self) -> Path:
        return self.group / self.name

    def command(self) -> list[str]:
        """A new run, or `--resume` of the interrupted one (its args.json holds every flag)."""
        argv = ["--resume", str(self.dir)] if (self.dir / "args.json").exists() else \
            [f.replace("{group}", str(self.group)) for f in self.flags]
        return [sys.executable, str(ALGOS / f"{self.script}.py"), *argv]


def script_flags(script: str) -> set[str]:
    """The flags of a script's --help, read from its Args dataclass without starting Python (tyro makes each field
    `--field-name`, and a bool field also `--no-field-name`)."""
    tree = ast.parse((ALGOS / f"{script}.py").read_text())
    args = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Args")
    flags = {"--help"}
    for field in (n for n in args.body if isinstance(n, ast.AnnAssign)):
        name = field.target.id.replace("_", "-")
        flags |= {f"--{name}", f"--no-{name}"} if ast.unparse(field.annotation) == "bool" else {f"--{name}"}
    return flags


def flag_names(flags: str) -> list[str]:
    """The flag names in a FLAGS string ("--a 1 --b=2" -> ["--a", "--b"])."""
    return [f.split("=")[0] for f in shlex.split(flags) if f.startswith("--")]


def parse_pairs(items: tuple[str, ...], what: str) -> dict[str, str]:
    pairs = {}
    for item in items:
        name, sep, flags = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z0-9_.]+", name):
            raise SystemExit(f"error: --{what} {item!r}: expected NAME=FLAGS with NAME of letters, digits, _ or .")
        pairs[name] = flags
    return pairs


def weights_sha256(path: Path) -> str:
    """The agent's identity: scripts/report.py's hash over its network tensors."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from report import checkpoint_hash

    return checkpoint_hash(path)


def finished(run: Run, args: Args) -> bool:
    """A finetuning run is finished once its summary.json exists (written last, atomically); a pretraining run once
    its checkpoint holds the final offline step (its metrics row can exist a moment before the checkpoint)."""
    if run.name != "pretrain":
        return (run.dir / "summary.json").exists()
    if not (run.dir / "checkpoint.pt").exists():
        return False
    sys.path.insert(0, str(ALGOS))
    from offline_data import load_checkpoint  # the scripts' own safe loader: no code in the file runs

    ckpt = load_checkpoint(str(run.dir / "checkpoint.pt"), None)
    return (ckpt.get("phase"), ckpt.get("step")) == ("offline", args.offline_steps)


def plan(args: Args) -> dict[Path, list[Run]]:
    """Every run of the grid, grouped by (dataset, seed): the pretraining run first."""
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown or not args.methods:
        raise SystemExit(f"error: unknown method(s) {unknown or '(none given)'}; choose from {', '.join(METHODS)}")
    if not args.seeds or not args.dataset_ids:
        raise SystemExit("error: give at least one --seeds and one --dataset-ids")
    for name in ("offline_steps", "online_steps", "eval_every", "slurm_time"):
        if getattr(args, name) <= 0:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    if args.workers < 0 or args.slurm_gpus_per_job < 0:
        raise SystemExit("error: --workers and --slurm-gpus-per-job must be >= 0")
    if not all(0 <= seed < 2**32 for seed in args.seeds):
        raise SystemExit(f"error: --seeds must be in [0, 2**32 - 1], got {' '.join(map(str, args.seeds))}")
    variants, extra = parse_pairs(args.variant, "variant"), parse_pairs(args.method_flags, "method-flags")
    for what, pairs in (("variant", variants), ("method-flags", extra)):  # a group's runs share agent, seed, steps
        for name, flags in pairs.items():
            if taken := sorted(set(flag_names(flags)) & SWEEP_SETS):
                raise SystemExit(f"error: --{what} {name}={flags!r}: the sweep sets {', '.join(taken)} for every "
                                 f"run itself")
    bad = [m for m in extra if m not in args.methods]
    if bad:
        raise SystemExit(f"error: --method-flags for {bad}, which is not among --methods {list(args.methods)}")
    accepted = {m: script_flags(m) for m in args.methods}
    for m, flags in extra.items():
        missing = [f for f in flag_names(flags) if f not in accepted[m]]
        if missing:
            raise SystemExit(f"error: --method-flags {m}={flags!r}: {m}.py has no flag {', '.join(missing)}")
    runs_of_method = {m: [(m, [])] for m in args.methods}
    for name, flags in variants.items():
        wanted = flag_names(flags)
        takers = [m for m in args.methods if all(f in accepted[m] for f in wanted)]
        if not takers:
            raise SystemExit(f"error: --variant {name}={flags!r}: no listed method accepts {' '.join(wanted)}")
        for m in args.methods:
            if m in takers:
                runs_of_method[m].append((f"{m}-{name}", shlex.split(flags)))
            else:
                print(f"sweep: variant {name} skipped for {m} (its --help lacks {' '.join(wanted)})")
    root = Path(os.environ.get("MINARI_DATASETS_PATH", Path.home() / ".minari" / "datasets"))
    missing = [d for d in args.dataset_ids if not (root / d / "data").is_dir()]
    if missing:
        raise SystemExit(f"error: dataset(s) {', '.join(missing)} not found under {root} (MINARI_DATASETS_PATH); "
                         f"a sweep does not download: run `minari download <id>` first")
    common = ["--threads", "1", "--eval-every", str(args.eval_every)]
    groups = {}
    for dataset_id in args.dataset_ids:
        for seed in args.seeds:
            group = Path(args.out) / dataset_id.replace("/", "-") / f"seed{seed}"
            ckpt = "{group}/pretrain/checkpoint.pt"
            runs = [Run("pretrain", "td3_bc", group, ["--dataset-id", dataset_id, "--seed", str(seed), *common,
                                                     "--offline-steps", str(args.offline_steps), "--online-steps", "0",
                                                     "--runs-dir", "{group}", "--run-name", "pretrain"])]
            for m in args.methods:
                # balanced replay's ensemble: member 0 is the group's agent, the others pretrain in the run as long
                pre = str(args.offline_steps) if m == "balanced_replay" else "0"
                for name, flags in runs_of_method[m]:
                    runs.append(Run(name, m, group, ["--checkpoint", ckpt, "--seed", str(seed), *common,
                                                     "--offline-steps", pre, "--online-steps", str(args.online_steps),
                                                     *shlex.split(extra.get(m, "")), *flags,
                                                     "--runs-dir", "{group}", "--run-name", name]))
            groups[group] = runs
    return groups


def check_grid(args: Args, groups: dict[Path, list[Run]]) -> None:
    """An --out made by a different grid is an error: every run setting must agree with OUT/sweep.json."""
    out = Path(args.out)
    grid = {"command": shlex.join(["python", "scripts/sweep.py", *sys.argv[1:]]), "offline_steps": args.offline_steps, "online_steps": args.online_steps, "eval_every": args.eval_every,
            "runs": {str(r.dir.relative_to(out)): r.flags for runs in groups.values() for r in runs}}
    path = out / "sweep.json"
    if path.exists():
        old = json.loads(path.read_text())
        for key in ("offline_steps", "online_steps", "eval_every"):
            if old[key] != grid[key]:
                raise SystemExit(f"error: {out} was made by a grid with --{key.replace('_', '-')} {old[key]}, not "
                                 f"{grid[key]}; choose another --out")
        for run, flags in grid["runs"].items():
            if run in old["runs"] and old["runs"][run] != flags:
                raise SystemExit(f"error: {out / run} was made with other flags ({' '.join(old['runs'][run])}); "
                                 f"choose another --out or another variant name")
        if set(grid["runs"]) <= set(old["runs"]):  # a part of the grid (some datasets or seeds): the command of
            grid["command"] = old["command"]        # record stays the whole grid's
            print(f"sweep: {len(grid['runs'])} of the {len(old['runs'])} runs of {path} (its command is kept)")
        elif not set(old["runs"]) <= set(grid["runs"]):  # a part that adds datasets or seeds: the command of record
            union = union_command({**old["runs"], **grid["runs"]}, grid["runs"])  # names theirs and this part's
            grid["command"] = union or old["command"]
            if not union:
                print(f"sweep: note: {path} keeps its command, which does not make this part's new runs: with them its "
                      f"runs are not one grid of datasets x seeds x runs of this command")
        grid["runs"] = {**old["runs"], **grid["runs"]}
    for group, runs in groups.items():  # runs finetuned from another agent than the group's
        hashes = {r.name: json.loads((r.dir / "args.json").read_text()).get("checkpoint_sha256")
                  for r in runs[1:] if (r.dir / "args.json").exists()}
        if len(set(hashes.values())) > 1:
            raise SystemExit(f"error: {group} mixes runs finetuned from different agents ({hashes}); remove the "
                             f"runs of the agent you do not want")
    if not args.dry_run:
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(grid, indent=2))


def union_command(runs: dict[str, list[str]], mine: dict[str, list[str]]) -> str | None:
    """This sweep's command with every dataset and seed of `runs` (OUT/sweep.json's, this part's `mine` included), or
    None if they are not one grid of datasets x seeds x runs or this command makes only some of those runs (another
    method or variant): a grid continued in parts keeps one command that makes it all."""
    datasets = list(dict.fromkeys(f[f.index("--dataset-id") + 1] for k, f in runs.items() if k.endswith("/pretrain")))
    seeds, names = sorted({int(k.split("/")[1][4:]) for k in runs}), {k.split("/")[2] for k in runs}
    if set(runs) != {f"{d.replace('/', '-')}/seed{s}/{n}" for d in datasets for s in seeds for n in names} or \
            names != {k.split("/")[2] for k in mine}:
        return None
    new, owner, argv = {"--dataset-ids": datasets, "--seeds": list(map(str, seeds))}, None, []
    for a in sys.argv[1:]:  # drop this part's --dataset-ids and --seeds with their values, then name the union's
        owner = a if a.startswith("--") else owner
        argv += [] if owner in new else [a]
    return shlex.join(["python", "scripts/sweep.py", *argv, *(x for flag, v in new.items() for x in (flag, *v))])


def agent_check(group: Path, runs: list[Run]) -> str | None:
    """After pretraining: the agent must be the one the group's existing finetuning runs started from."""
    from report import run_cpu as cpu  # scripts/ is sys.path[0] when sweep.py runs

    agent = weights_sha256(group / "pretrain" / "checkpoint.pt")
    for r in runs[1:]:
        if (r.dir / "args.json").exists():
            used = json.loads((r.dir / "args.json").read_text()).get("checkpoint_sha256")
            if used != agent:
                made_on = cpu(runs[0].dir / "args.json")
                return (f"{group}: the pretrained agent (sha256 {agent[:12]}, made on {made_on}) "
                        f"differs from the one {r.name} was finetuned from ({str(used)[:12]}; {r.name} ran on "
                        f"{cpu(r.dir / 'args.json')}): same seed and threads give the same agent only on the same CPU "
                        f"model; remove those runs or pretrain where they were made")
    return None


def foreign_agent(group: Path, runs: list[Run]) -> str | None:
    """Before a missing agent is pretrained again on this machine (local launcher): if the group's runs started from
    an agent made on another CPU model, pretraining here would make another agent and the runs would be refused, so
    the group is skipped at once. (Slurm nodes' CPUs are not known up front: there agent_check alone decides.)"""
    from report import run_cpu as cpu

    made, used = runs[0].dir / "args.json", [r.name for r in runs[1:] if (r.dir / "args.json").exists()]
    if not made.exists() or not used or cpu(made) in (this_cpu(), "CPU not recorded"):
        return None
    return (f"{group}: its agent was made on {cpu(made)} and this machine is {this_cpu()}; pretrained here it would "
            f"be another agent than the one {', '.join(used)} started from: continue this group on that CPU model "
            f"(or with --cross-cpu on a machine that computes like it), or remove those runs to redo it here")


def skip_reason(args: Args, group: Path, runs: list[Run]) -> str | None:
    """Why a group is skipped here, or None: with the local launcher, a group with unfinished runs whose agent is
    missing and was made on another CPU model (foreign_agent), unless --cross-cpu. Used by the sweep and by --dry-run
    alike."""
    if args.launcher != "local" or args.cross_cpu or finished(runs[0], args) or \
            all(finished(r, args) for r in runs[1:]):
        return None
    return foreign_agent(group, runs)


def this_cpu() -> str:
    """This machine's CPU as every run records it (td3_bc.py's cpu_name, which pretrains the agents)."""
    sys.path.insert(0, str(ALGOS))
    from td3_bc import cpu_name

    return cpu_name()


def take_lock(out: Path) -> None:
    """One sweep at a time per --out: OUT/sweep.lock names the sweep that runs (host, pid, and its Slurm jobs). A
    lock whose local process is gone and whose jobs have left the queue is stale and taken over."""
    path, host = out / "sweep.lock", socket.gethostname()
    if path.exists():
        try:
            held = json.loads(path.read_text())
        except ValueError:
            held = {}
        alive = held.get("host") == host and held.get("pid") and Path(f"/proc/{held['pid']}").exists()
        queued = set(held.get("slurm_jobs", [])) & set(subprocess.run(
            ["squeue", "-h", "-r", "-o", "%i"], capture_output=True, text=True).stdout.split()) \
            if held.get("slurm_jobs") and shutil.which("squeue") else set()
        if alive or queued or (held.get("host") not in (host, None)):
            raise SystemExit(f"error: another sweep is running on {out} ({held}); wait for it (or scancel its jobs), "
                             f"or delete {path} if you are sure none runs")
    path.write_text(json.dumps({"host": host, "pid": os.getpid()}))


def pending(args: Args, groups: dict[Path, list[Run]]) -> tuple[list[Run], dict[Path, list[Run]], list[Run]]:
    """The agents to pretrain, each group's unfinished finetuning runs, and those of groups skipped because their
    agent was made on another CPU model; a group whose agent exists must have the agent its finished runs came
    from. Prints how many runs there are."""
    pretrain, todo, skipped = [], {}, []
    for group, runs in groups.items():
        ft = [r for r in runs[1:] if not finished(r, args)]
        if not ft:
            continue
        problem = skip_reason(args, group, runs)
        if problem:
            print(f"sweep: skipping {problem}", flush=True)
            skipped += ft
            continue
        if not finished(runs[0], args):
            pretrain.append(runs[0])
        elif agent_check(group, runs):
            raise SystemExit(f"error: {agent_check(group, runs)}")
        todo[group] = ft
    total = sum(len(runs) - 1 for runs in groups.values())
    print(f"sweep: {total} finetuning runs, {total - sum(map(len, todo.values()))} already finished; "
          f"{args.launcher}", flush=True)
    return pretrain, todo, skipped


def run_local(args: Args, groups: dict[Path, list[Run]]) -> int:
    """A pool of --workers subprocesses; a group's finetuning runs start once its agent is pretrained."""
    workers = args.workers or os.cpu_count() or 1
    logs = Path(args.out) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    pretrain, todo, failed = pending(args, groups)
    waiting = {r.group: todo[r.group] for r in pretrain}  # a group's finetuning runs wait for its agent
    ready = [r for group, runs in todo.items() if group not in waiting for r in runs] + pretrain
    durations = []
    total = sum(len(runs) - 1 for runs in groups.values())
    n_done = total - sum(map(len, todo.values()))
    running = {}  # Popen -> (run, start time)
    while ready or running:
        while ready and len(running) < workers:
            run = ready.pop(0)
            how = "resuming" if (run.dir / "args.json").exists() else "starting"
            print(f"sweep: {how} {run.dir}", flush=True)
            log = open(logs / f"{run.dir.relative_to(args.out).as_posix().replace('/', '__')}.log", "a")
            running[subprocess.Popen(run.command(), stdout=log, stderr=subprocess.STDOUT)] = (run, time.time())
        time.sleep(0.5)
        for proc in [p for p in running if p.poll() is not None]:
            run, t0 = running.pop(proc)
            if proc.returncode != 0:
                failed.append(run)
                print(f"sweep: FAILED {run.dir} (exit {proc.returncode}; log in {logs})", flush=True)
                for r in waiting.pop(run.group, []):  # its finetuning runs cannot start
                    failed.append(r)
                continue
            if run.name == "pretrain":
                problem = agent_check(run.group, groups[run.group])
                if problem:
                    print(f"sweep: FAILED {problem}", flush=True)
                    failed += waiting.pop(run.group, [])
                    continue
                ready = waiting.pop(run.group, []) + ready  # its runs first: a group finishes before the next starts
                continue
            n_done += 1
            durations.append(time.time() - t0)
            busy = len([r for r, _ in running.values() if r.name != "pretrain"])
            left = total - n_done - busy - len([f for f in failed if f.name != "pretrain"])
            eta = sum(durations) / len(durations) * (left + busy) / workers / 60
            print(f"sweep: {n_done} done / {busy} running / {left} left | ETA {eta:.0f} min", flush=True)
    if failed:
        print(f"sweep: {len(failed)} run(s) failed or could not start: {', '.join(str(r.dir) for r in failed)}")
        return 1
    print(f"sweep: all {total} finetuning runs finished in {args.out}")
    return 0


def slurm_parameters(args: Args, after: str | None) -> dict:
    """submitit parameters of every job: one CPU, --slurm-time, the partition and GPUs only when asked for, and,
    for the finetuning array, `afterok` on the pretraining array (a job whose dependency fails is cancelled)."""
    extra = {"kill-on-invalid-dep": "yes", **({"dependency": f"afterok:{after}"} if after else {})}
    return {"timeout_min": args.slurm_time, "cpus_per_task": 1, "name": "sweep", "slurm_additional_parameters": extra,
            **({"slurm_partition": args.slurm_partition} if args.slurm_partition else {}),
            **({"slurm_gpus_per_node": args.slurm_gpus_per_job} if args.slurm_gpus_per_job else {})}


def run_slurm(args: Args, groups: dict[Path, list[Run]]) -> int:
    """The same runs as Slurm jobs through submitit: the pretraining runs as one job array, the finetuning runs as a
    second array that starts once all of the first succeeded (a failed pretraining cancels it: rerun the sweep).
    Waits for the jobs, reading their state from squeue and their result from the run files (no sacct needed)."""
    try:
        import submitit
        from submitit.helpers import CommandFunction
    except ImportError:
        raise SystemExit('error: --launcher slurm needs submitit: pip install -e ".[sweep]"') from None
    pre, by_group, _ = pending(args, groups)  # nothing skipped: the nodes' CPUs are not known here
    todo = [r for runs in by_group.values() for r in runs]
    total = sum(len(runs) - 1 for runs in groups.values())
    if not todo:
        print(f"sweep: all {total} finetuning runs finished in {args.out}")
        return 0
    ex = submitit.AutoExecutor(folder=Path(args.out) / "logs" / "slurm" / "%j", cluster="slurm")
    ex.update_parameters(**slurm_parameters(args, None))
    with ex.batch():
        pre_jobs = [ex.submit(CommandFunction(r.command(), cwd=os.getcwd())) for r in pre]
    if pre_jobs:
        ex.update_parameters(**slurm_parameters(args, pre_jobs[0].job_id.split("_")[0]))
    with ex.batch():
        ft_jobs = [ex.submit(CommandFunction(r.command(), cwd=os.getcwd())) for r in todo]
    lock = Path(args.out) / "sweep.lock"
    lock.write_text(json.dumps({**json.loads(lock.read_text()), "slurm_jobs": [j.job_id for j in pre_jobs + ft_jobs]}))
    print(f"sweep: submitted {len(pre_jobs)} pretraining and {len(ft_jobs)} finetuning jobs "
          f"({', '.join(sorted({j.job_id.split('_')[0] for j in pre_jobs + ft_jobs}))})", flush=True)
    waiting, failed, n_done = dict(zip(pre_jobs + ft_jobs, pre + todo)), [], total - len(todo)
    while waiting:
        time.sleep(2)
        queued = set(subprocess.run(["squeue", "-h", "-r", "-o", "%i"], capture_output=True, text=True).stdout.split())
        for job in [j for j in waiting if j.job_id not in queued]:  # the job has ended: its files tell how
            run = waiting.pop(job)
            problem = None if finished(run, args) else f"job {job.job_id} ended without finishing {run.dir}"
            problem = problem or (agent_check(run.group, groups[run.group]) if run.name == "pretrain" else None)
            if problem:
                failed.append(run)
                print(f"sweep: FAILED {problem} (logs in {Path(args.out) / 'logs' / 'slurm'})", flush=True)
            elif run.name != "pretrain":
                n_done += 1
                print(f"sweep: {n_done} done / {len([r for r in waiting.values() if r.name != 'pretrain'])} queued "
                      f"or running", flush=True)
    if failed:
        print(f"sweep: {len(failed)} run(s) failed: {', '.join(str(r.dir) for r in failed)}")
        return 1
    print(f"sweep: all {total} finetuning runs finished in {args.out}")
    return 0


if __name__ == "__main__":
    args = tyro.cli(Args, description=__doc__.split("\n\n")[0])
    groups = plan(args)
    check_grid(args, groups)
    if args.dry_run:
        for group, runs in groups.items():
            problem = skip_reason(args, group, runs)
            if problem:
                print(f"skipped: {problem}")
                continue
            idle = all(finished(r, args) for r in runs[1:])  # its agent is not pretrained again (see pending)
            for r in runs:
                prefix = "done: " if finished(r, args) else "not needed: " if idle else ""
                print(prefix + shlex.join(r.command()))
        raise SystemExit(0)
    take_lock(Path(args.out))
    status = run_slurm(args, groups) if args.launcher == "slurm" else run_local(args, groups)
    (Path(args.out) / "sweep.lock").unlink()
    raise SystemExit(status)
