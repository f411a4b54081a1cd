"""Issue 45's screen of conservative-finetuning candidates (benchmarks.md, section 7), from a sweep's committed files.

    python scripts/screen.py --narrow benchmarks/sweeps/expert/standin-hopper-expert-v0 \
        benchmarks/sweeps/main/standin-hopper-medium-v0 ...

For each dataset folder (seed*/<run>/ below it) it prints one markdown row: each candidate's mean score after step 0 /
dip / worst fall over the seeds, and the bar from the same agents and seeds: mean >= the best of TD3+BC online, naive
TD3 and `fixed` (narrow data: that best minus 5), dip <= 1/3 of naive TD3's, worst fall <= `fixed`'s + 10. The dip is
summary.json's; the worst fall is the largest drop of an evaluation below the best evaluation before it. Bold: that
part of the bar met; a check mark: all of it.
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from statistics import mean

CANDIDATES = ("const", "proto", "lagrange", "noisy")


def scores(run: Path) -> tuple[float, float, float]:
    """(mean score after step 0, dip, worst fall) of one finished run."""
    evals = [float(r["eval_score"]) for r in csv.DictReader(open(run / "metrics.csv"))
             if r["phase"] == "online" and r["eval_score"]]
    fall = max(max(evals[:i + 1]) - e for i, e in enumerate(evals))
    return mean(evals[1:]), json.loads((run / "summary.json").read_text())["dip"], fall


def row(folder: Path, narrow: bool) -> str:
    runs = {}  # run name -> seed -> scores, finished runs only
    for summary in sorted(folder.glob("seed*/*/summary.json")):
        runs.setdefault(summary.parent.name, {})[int(summary.parent.parent.name[4:])] = scores(summary.parent)
    seeds = sorted(runs["conservative_ft"])
    missing = [c for c in CANDIDATES if sorted(runs.get(f"conservative_ft-{c}", {})) != seeds]
    if missing:
        raise SystemExit(f"error: {folder}: {missing} not finished on seeds {seeds}")
    over = {name: [mean(by_seed[s][k] for s in seeds) for k in range(3)] for name, by_seed in runs.items()}
    bar = (max(over[m][0] for m in ("td3_bc", "naive_ft", "conservative_ft")) - (5 if narrow else 0),
           over["naive_ft"][1] / 3, over["conservative_ft"][2] + 10)
    cells = []
    for c in CANDIDATES:
        v = over[f"conservative_ft-{c}"]
        met = [v[0] >= bar[0], v[1] <= bar[1], v[2] <= bar[2]]
        cells.append(" / ".join(f"**{x:.1f}**" if ok else f"{x:.1f}" for x, ok in zip(v, met)) + " ✓" * all(met))
    name = folder.name.removeprefix("standin-").removesuffix("-v0").replace("-", " ", 1)
    return f"| {name} | {','.join(map(str, seeds))} | {' / '.join(f'{b:.1f}' for b in bar)} | {' | '.join(cells)} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folders", nargs="*", help="a sweep's dataset folders (table a's data)")
    parser.add_argument("--narrow", action="append", default=[], help="a dataset folder of narrow data (bar: the best"
                        " - 5); repeatable")
    args = parser.parse_args()
    print("| dataset | seeds | bar: mean ≥ / dip ≤ / fall ≤ | " + " | ".join(f"`{c}`" for c in CANDIDATES) + " |")
    print("|---|---|---|" + "---|" * len(CANDIDATES))
    for folder, narrow in [(f, True) for f in args.narrow] + [(f, False) for f in args.folders]:
        print(row(Path(folder), narrow))


if __name__ == "__main__":
    main()
