"""Turn the committed per-run files under benchmarks/ into the tables and plots of benchmarks.md.

    pip install -e ".[plot]"            # matplotlib, only for the PNGs
    python scripts/report.py                          # section 1's TD3+BC tables (benchmarks/td3_bc)
    python scripts/report.py benchmarks/sweeps/main   # a sweep's README.md, its curves, and its summary table
    python scripts/report.py runs/ [RUN_DIR ...] --out runs/report   # any runs: report.png (curves), report.md

Layouts it reads (checkpoints are never committed):
    benchmarks/td3_bc/<dataset>/seed<S>/{args.json, metrics.csv}       (copied from run directories with `--collect`)
    <sweep --out>/<dataset>/seed<S>/<method>[-<variant>]/{args.json, metrics.csv, episodes.csv, summary.json}
A sweep's detail (per dataset: its table, per-seed values, agents, diagnostics, curves) is written to
<sweep --out>/README.md, generated whole. Blocks in benchmarks.md and README.md sit between `<!-- report:NAME -->` and
`<!-- /report:NAME -->`: `sweepsummary/<sweep name>` (one table over the sweep's datasets), and `sweepseg/...`
(table c's segments) and section 1's `td3_bc/<dataset>` where the text asks for them.
"""
from __future__ import annotations

import argparse
import csv
import json
import re
import shutil
import statistics
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
METHODS = {"td3_bc": "TD3+BC continued online", "naive_ft": "naive TD3 finetuning",
           "conservative_ft": "conservative finetuning (ours)", "balanced_replay": "balanced replay (Lee et al.)"}


def read_csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def evals(rows: list[dict], phase: str) -> list[tuple[int, float]]:
    return [(int(r["step"]), float(r["eval_score"])) for r in rows if r["phase"] == phase and r["eval_score"]]


def mean_sd(xs: list[float]) -> str:
    xs = [x for x in xs if x is not None]
    if not xs:
        return "–"
    return f"{statistics.mean(xs):.1f} ± {statistics.stdev(xs):.1f}" if len(xs) > 1 else f"{xs[0]:.1f}"


def td3_bc_block(dataset_dir: Path) -> str:
    runs = sorted(dataset_dir.glob("seed*"), key=lambda p: int(p.name[4:]))
    curves = {p.name: evals(read_csv(p / "metrics.csv"), "offline") for p in runs}
    steps = [s for s, _ in next(iter(curves.values()))]
    out = ["| step | " + " | ".join(curves) + " | mean |", "|---" * (len(curves) + 2) + "|"]
    for i, step in enumerate(steps):
        vals = [c[i][1] for c in curves.values() if len(c) > i]
        out.append(f"| {step:,} | " + " | ".join(f"{v:.1f}" for v in vals) + f" | {statistics.mean(vals):.1f} |")
    last5 = {k: statistics.mean(v for _, v in c[-5:]) for k, c in curves.items()}
    walls = {p.name: float(read_csv(p / "metrics.csv")[-1]["elapsed_s"]) for p in runs}
    out.append("")
    out.append("| run | mean of last 5 evaluations | wall time (training + evaluation) |\n|---|---|---|")
    for k in curves:
        out.append(f"| {k} | {last5[k]:.1f} | {walls[k] / 60:.1f} min |")
    out.append(f"| **mean over seeds** | **{statistics.mean(last5.values()):.1f}** | |")
    return "\n".join(out)


def label(name: str) -> str:
    """A sweep run directory's name, `method[-variant]`, as a table row: `naive TD3 finetuning [reset]`."""
    return METHODS[name.split("-")[0]] + (f" [{name.split('-', 1)[1]}]" if "-" in name else "")


def row_order(name: str) -> tuple[int, str]:
    """Sort key of a sweep run directory's name: methods in METHODS order, each before its variants."""
    return list(METHODS).index(name.split("-")[0]), name


def mean_after_step0(run: Path) -> float:
    """The average of all evaluations after step 0: the area under the learning curve, i.e. sample efficiency."""
    return statistics.mean(v for t, v in evals(read_csv(run / "metrics.csv"), "online") if t > 0)


def finetune_row(label: str, runs: list[Path]) -> str | None:
    """One method over seeds: mean ± sd of the collapse summary, recovery per seed, mean score after step 0."""
    runs = [r for r in runs if (r / "summary.json").exists()]
    if not runs:
        return None
    summaries = [json.loads((r / "summary.json").read_text()) for r in runs]
    rec = ", ".join("never" if s["recovery_steps"] is None else f"{s['recovery_steps']:,}" for s in summaries)
    area = [mean_after_step0(r) for r in runs]
    last = read_csv(runs[0] / "metrics.csv")[-1]
    updates = int(last["updates"]) if last.get("updates") else summaries[0]["final_step"]  # else 1 per step
    return (f"| {label} | {len(summaries)} | {mean_sd([s['step0_score'] for s in summaries])} | "
            f"{mean_sd([s['min_score_in_window'] for s in summaries])} | {mean_sd([s['dip'] for s in summaries])} "
            f"| {rec} | {mean_sd(area)} | {mean_sd([s['final_score'] for s in summaries])} | {updates:,} "
            f"| {statistics.mean(float(read_csv(r / 'metrics.csv')[-1]['elapsed_s']) for r in runs) / 60:.0f} min |")


def finetune_header(window: str) -> list[str]:
    return [f"| method | seeds | step-0 score | lowest score (first {window}) | dip | recovery steps (per seed) "
            "| mean score after step 0 | final score | updates | wall time |", "|---" * 10 + "|"]


def sweep_runs(dataset_dir: Path) -> dict[str, list[Path]]:
    """A sweep's runs of one dataset, {method[-variant]: [run dir per seed]} (methods in METHODS order)."""
    runs = {}
    for d in sorted(dataset_dir.glob("seed*/*"), key=lambda d: (int(d.parent.name[4:]), d.name)):
        if d.is_dir() and d.name != "pretrain":
            runs.setdefault(d.name, []).append(d)
    return dict(sorted(runs.items(), key=lambda kv: row_order(kv[0])))


def sweep_block(dataset_dir: Path, made_by: bool = True) -> str:
    """The finetuning table of one dataset of a sweep (finished runs only), then per-seed values, then (made_by) the
    command that made it (from the sweep's sweep.json)."""
    runs = sweep_runs(dataset_dir)
    summaries = [json.loads((r / "summary.json").read_text()) for rs in runs.values() for r in rs
                 if (r / "summary.json").exists()]
    windows = {min(s["collapse_window"], s["final_step"]) for s in summaries}  # a 25k run's window is its 25k
    rows = [finetune_row(label(name), rs) for name, rs in runs.items()]
    grid = json.loads((dataset_dir.parent / "sweep.json").read_text()) if (dataset_dir.parent / "sweep.json").exists() else {}
    made = ["", f"Made by `{grid['command']}` (stand-in data where the id says standin)."] \
        if grid.get("command") and made_by else []
    if not any(rows):
        return "\n".join(["No finetuning run of this dataset has finished yet."] + made)
    out = finetune_header("/".join(f"{w // 1000}k" for w in sorted(windows)) or "window") + [r for r in rows if r]
    seeds = sorted({r.parent.name for rs in runs.values() for r in rs}, key=lambda s: int(s[4:]))
    out += ["", "Per seed, mean score after step 0 / final score (– : not finished):", "",
            "| method | " + " | ".join(seeds) + " |", "|---" * (len(seeds) + 1) + "|"]
    for name, rs in runs.items():
        cells = {}
        for r in rs:
            if (r / "summary.json").exists():
                final = evals(read_csv(r / "metrics.csv"), "online")[-1][1]
                cells[r.parent.name] = f"{mean_after_step0(r):.1f} / {final:.1f}"
        out.append(f"| {label(name)} | " + " | ".join(cells.get(s, "–") for s in seeds) + " |")
    return "\n".join(out + ["", "Agents (weight hash of each seed's TD3+BC agent, the CPUs it was pretrained on): "
                             + "; ".join(agent(dataset_dir / s, runs) for s in seeds) + "."] + made)


def summary_block(datasets: list[Path]) -> str:
    """One table over a sweep's datasets: each method's mean score after step 0 and its dip, mean ± sd over finished
    seeds, the best mean of each dataset in bold (among rows with every seed finished: a mean over fewer seeds is not
    comparable), and how many seeds finished where not all did."""
    runs = {d: sweep_runs(d) for d in datasets}
    names = sorted({n for rs in runs.values() for n in rs}, key=row_order)
    cells = {}
    for d, rs in runs.items():
        seeds = {r.parent.name for dirs in rs.values() for r in dirs}
        for name, dirs in rs.items():
            done = [r for r in dirs if (r / "summary.json").exists()]
            if done:
                dip = mean_sd([json.loads((r / "summary.json").read_text())["dip"] for r in done])
                cells[d, name] = ([mean_after_step0(r) for r in done], dip, len(seeds))
    best = {d: max((statistics.mean(c[0]) for (e, _), c in cells.items() if e == d and len(c[0]) == c[2]),
                   default=None) for d in datasets}
    out = ["| method | " + " | ".join(f"`{d.name.replace('-', '/', 2)}`" for d in datasets) + " |",
           "|---" * (1 + len(datasets)) + "|"]
    for name in names:
        row = []
        for d in datasets:
            if (d, name) not in cells:
                row.append("–")
                continue
            area, dip, n = cells[d, name]
            mean = f"**{mean_sd(area)}**" if statistics.mean(area) == best[d] and len(area) == n else mean_sd(area)
            row.append(f"{mean} (dip {dip})" + (f", {len(area)} of {n} seeds" if len(area) < n else ""))
        out.append(f"| {label(name)} | " + " | ".join(row) + " |")
    return "\n".join(out) if cells else "(no finished run yet)"


def agent(group: Path, runs: dict[str, list[Path]]) -> str:
    """`seedS 1a2b3c4d… (CPU)`: the agent the group's finished runs started from (their args.json), and the CPUs its
    pretraining run started on, first to last (meta.cpu; runs made before it was recorded say so)."""
    hashes = sorted({json.loads((r / "args.json").read_text()).get("checkpoint_sha256") or "?" for rs in runs.values()
                     for r in rs if r.parent == group and (r / "summary.json").exists() and (r / "args.json").exists()})
    pre = group / "pretrain" / "args.json"
    return f"{group.name} {' '.join(h[:8] + '…' for h in hashes) or '–'} ({made_on(pre) if pre.exists() else 'CPU not recorded'})"


def made_on(args_json: Path) -> str:
    """Every CPU a run started or resumed on, in order ("A, again on B"; a preloaded LD_PRELOAD library is named)."""
    run = json.loads(args_json.read_text())
    cpus = [m.get("cpu", "CPU not recorded") + (" with LD_PRELOAD " + Path(m["env"]["LD_PRELOAD"]).name
                                                 if m.get("env", {}).get("LD_PRELOAD") else "")
            for m in (r.get("meta", {}) for r in [run, *run.get("resumes", [])])]
    return ", again on ".join(c for i, c in enumerate(cpus) if c not in cpus[:i])


def run_cpu(args_json: Path) -> str:
    """The CPU a run last started or resumed on (its args.json meta.cpu), or 'CPU not recorded' (older runs)."""
    run = json.loads(args_json.read_text())
    return (run.get("resumes") or [run])[-1].get("meta", {}).get("cpu") or "CPU not recorded"


def diagnostics_block(runs: dict[str, list[Path]], steps) -> str:
    """Collapse diagnostics at a few online steps, mean over finished seeds: distance to pi_0 and Q on offline/online
    states (runs {label: run dirs})."""
    out = ["| method | " + " | ".join(f"‖π−π₀‖ @{s:,}" for s in steps) + " | " +
           " | ".join(f"Q(s,π(s)) offline / online @{s:,}" for s in steps) + " |", "|---" * (1 + 2 * len(steps)) + "|"]
    for label, dirs in runs.items():
        rows = [{int(r["step"]): r for r in read_csv(p / "metrics.csv") if r["phase"] == "online"}
                for p in dirs if (p / "summary.json").exists()]
        rows = [r for r in rows if all(s in r for s in steps)]
        if not rows:
            continue
        m = lambda col, s: statistics.mean(float(r[s][col]) for r in rows)  # noqa: E731
        out.append(f"| {label} | " + " | ".join(f"{m('pi_dist', s):.2f}" for s in steps) + " | " +
                   " | ".join(f"{m('q_pi_offline', s):.0f} / {m('q_pi_online', s):.0f}" for s in steps) + " |")
    return "\n".join(out) if len(out) > 2 else "(no finished run yet)"


def replay_block(runs: dict[str, list[Path]], steps) -> str:
    """Balanced replay's own diagnostics at a few online steps, mean over finished seeds: the share of online
    transitions in the RL batches and the Q-ensemble's disagreement q_std (runs {label: run dirs}; only runs that
    log them)."""
    cols = {"online share": "online_share", "Q std over members": "q_std"}
    out = ["| method | " + " | ".join(f"{c} @{s:,}" for c in cols for s in steps) + " |",
           "|---" * (1 + len(cols) * len(steps)) + "|"]
    for label, dirs in runs.items():
        rows = [{int(r["step"]): r for r in read_csv(p / "metrics.csv") if r["phase"] == "online"}
                for p in dirs if (p / "summary.json").exists()]
        rows = [r for r in rows if all(s in r and r[s].get("online_share") for s in steps)]
        if rows:
            out.append(f"| {label} | " + " | ".join(
                f"{statistics.mean(float(r[s][col]) for r in rows):.3g}" for col in cols.values() for s in steps) + " |")
    return "\n".join(out) if len(out) > 2 else "(no finished balanced replay run yet)"


def span(curve: list[tuple[int, float]], a: int, b: int) -> float | None:
    """Mean evaluation score over the steps in (a, b] (None: no evaluation there)."""
    return statistics.mean(vs) if (vs := [v for t, v in curve if a < t <= b]) else None


def segments_block(runs: dict[str, list[Path]], n: int, parts: int = 5) -> str:
    """Mean evaluation score within each of `parts` equal spans of the online phase, mean over finished seeds: does a
    method keep improving late in a long run (runs {label: run dirs})."""
    edges = [n * k // parts for k in range(parts + 1)]
    out = ["| method | " + " | ".join(f"({a / 1000:g}k, {b / 1000:g}k]" for a, b in zip(edges, edges[1:])) + " |",
           "|---" * (1 + parts) + "|"]
    for label, dirs in runs.items():
        curves = [evals(read_csv(p / "metrics.csv"), "online") for p in dirs if (p / "summary.json").exists()]
        if curves:
            means = [[m for c in curves if (m := span(c, a, b)) is not None] for a, b in zip(edges, edges[1:])]
            out.append(f"| {label} | " + " | ".join(f"{statistics.mean(m):.1f}" if m else "–" for m in means) + " |")
    return "\n".join(out) if len(out) > 2 else "(no finished run yet)"


def finetune_plot(dataset_dir: Path, png: Path, runs: dict[str, list[Path]]) -> None:
    """Learning curves of one dataset: mean over finished seeds with the min-max band (runs {label: run dirs})."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4 + 0.2 * -(-len(runs) // 2)), layout="constrained")  # + legend rows
    for label, dirs in runs.items():
        curves = [evals(read_csv(r / "metrics.csv"), "online") for r in dirs if (r / "summary.json").exists()]
        curves = [c for c in curves if c]
        if not curves:
            continue
        n = min(len(c) for c in curves)
        steps = [s for s, _ in curves[0][:n]]
        per_step = [[c[i][1] for c in curves] for i in range(n)]
        seeds = f"{len(curves)} seed" + "s" * (len(curves) > 1)
        line, = ax.plot(steps, [statistics.mean(v) for v in per_step], label=f"{label} ({seeds})",
                        linestyle=("-", "--", ":")[len(ax.lines) // 10 % 3])  # 10 colours, then the next style
        ax.fill_between(steps, [min(v) for v in per_step], [max(v) for v in per_step], alpha=0.2,
                        color=line.get_color())
    ax.set_xlabel("online environment steps")
    ax.set_ylabel("normalized score (mean, min–max over seeds)")
    ax.set_title(f"{dataset_dir.name.replace('-', '/', 2)} (stand-in data)")
    ax.grid(alpha=0.3)
    fig.legend(loc="outside lower center", ncols=2, fontsize="small", frameon=False)  # below the axes: no curve hidden
    fig.savefig(png, dpi=110)
    plt.close(fig)


def sweep_readme(sweep: Path, datasets: list[Path], at: tuple[int, ...]) -> str:
    """The sweep's README.md: per dataset, its finetuning table, per-seed values, agents and command, the collapse
    diagnostics at the steps `at`, balanced replay's own diagnostics, the mean score per fifth of the online phase,
    and the curves."""
    grid = json.loads((sweep / "sweep.json").read_text())
    out = [f"# Sweep `{sweep.name}`: the detail behind benchmarks.md", "", *textwrap.wrap(
           f"Generated by `python scripts/report.py benchmarks/sweeps/{sweep.name}` from the run files in this folder "
           "(do not edit). Scores are normalized (×100) with each dataset's reference scores; a `standin/...` "
           "dataset is stand-in data, not the official D4RL data. The grid:", 120, break_on_hyphens=False),
           "", "```bash", grid.get("command", "?"), "```", "", *textwrap.wrap("Columns: *mean score after step 0* averages every evaluation after online step 0 (the area under the "
           "curve); the *dip* is the step-0 score minus the lowest evaluation in the collapse window; *recovery steps* "
           "count until an evaluation regains the step-0 score (never: it did not). ‖π−π₀‖ is the mean distance of "
           "the policy from the pretrained one, Q(s,π(s)) the critic at the policy's action on offline / online "
           "states.", 120, break_on_hyphens=False)]
    for d in datasets:
        labelled = {label(n): rs for n, rs in sweep_runs(d).items()}
        out += ["", f"## `{d.name.replace('-', '/', 2)}`, {grid.get('online_steps', 0):,} online steps", "",
                sweep_block(d, made_by=False), "", "Collapse diagnostics (mean over finished seeds):", "",
                diagnostics_block(labelled, at)]
        replay = replay_block(labelled, at)
        if not replay.startswith("(no "):
            out += ["", "Balanced replay's own diagnostics:", "", replay]
        out += ["", "Mean score in each fifth of the online phase:", "",
                segments_block(labelled, grid.get("online_steps", 0))]
        if labelled:
            out += ["", f"![learning curves](../../sweep_{sweep.name}_{d.name}.png)"]
    return "\n".join(out) + "\n"


def replace_block(text: str, name: str, body: str) -> str:
    pattern = re.compile(rf"(<!-- report:{re.escape(name)} -->\n).*?(<!-- /report:{re.escape(name)} -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(f"error: benchmarks.md has no block <!-- report:{name} --> ... <!-- /report:{name} -->")
    return pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(2), text)


def checkpoint_hash(path: Path) -> str:
    """sha256 over the network tensors (actor, critics, targets) of a checkpoint, in a fixed order: equal hashes
    mean bit-identical weights, whatever else (timestamps, paths in args) differs. The scripts' own function, which
    they use to record the agent a --checkpoint run starts from (args.json checkpoint_sha256)."""
    sys.path.insert(0, str(ROOT / "algorithms"))
    from offline_data import load_checkpoint  # the scripts' own safe loader: no code in the file runs
    from td3_bc import weights_sha256

    return weights_sha256(load_checkpoint(str(path), None, ensembles=True))


def find_runs(paths: list[str]) -> list[Path]:
    """Run directories (those holding an args.json) among the paths: a run, or a folder searched for runs."""
    runs = []
    for path in map(Path, paths):
        if not path.is_dir():
            raise SystemExit(f"error: {path} is not a directory (give run directories, or folders holding runs)")
        found = [path] if (path / "args.json").exists() else sorted(a.parent for a in path.rglob("args.json"))
        if not found:
            raise SystemExit(f"error: {path} holds no run (no args.json in it or below it)")
        runs += [r for r in found if r not in runs]
    return runs


# flags that tell runs of one setting apart without changing it: seeds, names, places, threads, the agent file
NOT_SETTING = {"seed", "run_name", "runs_dir", "resume", "threads", "device", "checkpoint"}


def run_info(run: Path) -> dict:
    """A run's script, setting (its flags but NOT_SETTING), evaluations per phase and summary, from its files."""
    try:
        info = json.loads((run / "args.json").read_text())
        rows = read_csv(run / "metrics.csv") if (run / "metrics.csv").exists() else []
        off, on = evals(rows, "offline"), evals(rows, "online")
        summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").exists() else None
        script, args = info["algorithm"], info["args"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"error: {run}: not a readable run of these scripts ({type(e).__name__}: {e})") from None
    setting = {k: v for k, v in sorted(args.items()) if k not in NOT_SETTING}
    return {"dir": run, "script": script, "setting": setting, "offline": off, "online": on, "summary": summary,
            "offline_steps": args.get("offline_steps") or 0}


def group_runs(runs: list[Path]) -> dict[str, list[dict]]:
    """Runs grouped by script and setting, each group named by its script and the flags that differ between groups."""
    infos = [run_info(r) for r in runs]
    groups: dict[str, list[dict]] = {}
    for i in infos:
        same = [j["setting"] for j in infos if j["script"] == i["script"]]  # flags that differ between its runs
        flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in i["setting"].items()
                         if k != "dataset_id" and len({json.dumps(x.get(k)) for x in same}) > 1)
        name = f"{i['script']} on {i['setting'].get('dataset_id')}" + (f" [{flags}]" if flags else "")
        groups.setdefault(name, []).append(i)
    return groups


def runs_table(groups: dict[str, list[dict]]) -> str:
    """Per group: seeds, step-0 score, dip, recovery steps, final score (online runs from summary.json; an offline-only
    run: its last evaluation as the final score)."""
    out = ["| runs | seeds | step-0 score | dip | recovery steps (per run) | final score |", "|---|---|---|---|---|---|"]
    for name, infos in groups.items():
        sums = [i["summary"] for i in infos if i["summary"]]
        finals = [s["final_score"] for s in sums] or [i["offline"][-1][1] for i in infos if i["offline"]]
        recovery = ", ".join("never" if s["recovery_steps"] is None else f"{s['recovery_steps']:,}" for s in sums)
        out.append(f"| {name} | {len(infos)} | {mean_sd([s['step0_score'] for s in sums])} | "
                   f"{mean_sd([s['dip'] for s in sums])} | {recovery or '–'} | {mean_sd(finals)} |")
    return "\n".join(out) + "\n"


def runs_plot(groups: dict[str, list[dict]], png: Path) -> None:
    """Every run's evaluations against its step (offline steps, then online steps after them), one colour per group;
    a dotted line where each group's online phase starts (online step 0)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4 + 0.2 * len(groups)), layout="constrained")
    for k, (name, infos) in enumerate(groups.items()):
        color = f"C{k % 10}"
        for j, i in enumerate(infos):
            curve = i["offline"] + [(i["offline_steps"] + s, v) for s, v in i["online"]]
            if curve:
                ax.plot(*zip(*curve), color=color, alpha=0.8, label=name if j == 0 else None)
        starts = {i["offline_steps"] for i in infos if i["online"]}
        for x in starts:
            ax.axvline(x, color=color, linestyle=":", alpha=0.7)
    if any(i["online"] for infos in groups.values() for i in infos):
        ax.plot([], [], color="gray", linestyle=":", label="online step 0 (offline phase before it)")
    ax.set_xlabel("step (offline, then online)")
    ax.set_ylabel("evaluation score")
    ax.grid(alpha=0.3)
    fig.legend(loc="outside lower center", ncols=1, fontsize="small", frameon=False)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)


def collect(src: Path, dest: Path) -> None:
    """Copy the small files of a finished run directory (never its checkpoint)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("args.json", "metrics.csv", "episodes.csv", "summary.json"):
        if (src / name).exists():
            shutil.copy(src / name, dest / name)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--collect", nargs=2, metavar=("RUN_DIR", "DEST"), help="copy a run's small files to DEST first")
    p.add_argument("--hash", metavar="CHECKPOINT", help="print the weight hash of a checkpoint and exit")
    p.add_argument("--no-plots", action="store_true", help="skip the PNGs (no matplotlib needed)")
    p.add_argument("paths", nargs="*", metavar="PATH", help="a scripts/sweep.py --out directory (its README.md, "
                   "blocks and curves), or any run directories and folders holding runs (their curves and table)")
    p.add_argument("--out", default="report", help="with run directories: write OUT.png and OUT.md (default: report)")
    a = p.parse_args()
    if a.hash:
        print(checkpoint_hash(Path(a.hash)))
        raise SystemExit(0)
    if a.collect:
        collect(Path(a.collect[0]), Path(a.collect[1]))
        raise SystemExit(0)
    if a.paths and not (len(a.paths) == 1 and (Path(a.paths[0]) / "sweep.json").exists()):  # runs, not a sweep
        groups = group_runs(find_runs(a.paths))
        table = runs_table(groups)
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out + ".md").write_text(table)
        print(table + f"{a.out}.md written")
        if not a.no_plots:
            runs_plot(groups, Path(a.out + ".png"))
            print(f"{a.out}.png written")
        raise SystemExit(0)
    md = (BENCH.parent / "benchmarks.md").read_text()
    if a.paths:
        sweep = Path(a.paths[0])
        grid = json.loads((sweep / "sweep.json").read_text())
        n, every = grid["online_steps"], grid["eval_every"]  # diagnostics at 1/20, 1/4 and all of the online steps
        at = tuple(max(every, n // k // every * every) for k in (20, 4)) + (n,)
        datasets = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name != "logs")
        (sweep / "README.md").write_text(sweep_readme(sweep, datasets, at))
        print(f"{sweep / 'README.md'} written")
        blocks = {f"sweepsummary/{sweep.name}": summary_block(datasets)}  # where benchmarks.md or README.md ask
        blocks.update({f"sweepseg/{sweep.name}/{d.name}": segments_block(
            {label(k): rs for k, rs in sweep_runs(d).items()}, n) for d in datasets})
        for doc in (BENCH.parent / "benchmarks.md", BENCH.parent / "README.md"):
            text = doc.read_text()
            for name, body in blocks.items():
                if f"<!-- report:{name} -->" in text:
                    text = replace_block(text, name, body)
            doc.write_text(text)
        if not a.no_plots:
            for d in datasets:
                labelled = {label(k): rs for k, rs in sweep_runs(d).items()}
                if labelled:  # no curves before a finetuning run exists
                    finetune_plot(d, BENCH / f"sweep_{sweep.name}_{d.name}.png", labelled)
        raise SystemExit(0)
    for d in sorted((BENCH / "td3_bc").glob("*")):
        if f"<!-- report:td3_bc/{d.name} -->" in md:
            md = replace_block(md, f"td3_bc/{d.name}", td3_bc_block(d))
    (BENCH.parent / "benchmarks.md").write_text(md)
    print("benchmarks.md updated")
