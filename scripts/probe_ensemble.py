"""How much the members of a balanced_replay.py Q-ensemble agree, on states of its dataset.

    python scripts/probe_ensemble.py RUN_DIR/checkpoint.pt [--states 2048] [--seed 0]

For N members with actors pi_j and twin critics (Q_i1, Q_i2), on states s drawn uniformly from the offline dataset
(normalized as in the run), it prints: each member's distance to the ensemble's action a(s) = mean_j pi_j(s) and to
the dataset action; q_std, the std over members of min(Q_i1, Q_i2)(s, a(s)) (the run's `q_std` column, here on
offline states only); the same at the dataset actions; and the matrix Q_i(s, pi_j(s)) (critic i, actor j), whose
spread says whether the critics tell the members' actions apart. The checkpoint may be any online one (the
ensemble as trained so far), or the last offline one of a run with --online-steps 0: then the members loaded with
--checkpoint and those pretrained in the run are stacked as the handoff stacks them, so

    python algorithms/balanced_replay.py --checkpoint AGENT --offline-steps 100000 --online-steps 0 ...

followed by this script shows the ensemble exactly as it starts online.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "algorithms"))
import balanced_replay as br  # noqa: E402
from offline_data import load_dataset  # noqa: E402

NETS = ("actor", "critic", "actor_target", "critic_target", "actor_opt", "critic_opt")


def ensemble(ckpt: dict) -> dict:
    """The checkpoint's whole ensemble as a stack_members state: as saved online, or stacked like the handoff."""
    if ckpt["phase"] == "online":
        return {"n": ckpt["ensemble_size"], **{k: ckpt[k] for k in NETS}}
    trained = {"n": ckpt["actor"]["layers.0.weight"].shape[0], **{k: ckpt[k] for k in NETS}}  # pretrained in the run
    return br.stack_members(ckpt["members"] + [trained])


def probe(ckpt: dict, obs: torch.Tensor, act: torch.Tensor) -> dict:
    """Agreement statistics of the ensemble on normalized states `obs` with dataset actions `act`."""
    state = ensemble(ckpt)
    n, hidden = state["n"], ckpt["args"]["hidden"]
    actor = br.EnsembleActor(obs.shape[1], act.shape[1], state["actor"]["max_action"], hidden, n)
    critic = br.Critic(obs.shape[1], act.shape[1], hidden, 2 * n)
    actor.load_state_dict(state["actor"])
    critic.load_state_dict(state["critic"])
    with torch.no_grad():
        pis = actor.members(obs)  # pi_j(s), (N, B, act_dim)
        a = pis.mean(0)
        q = lambda x: critic(obs, x).view(2, n, -1).min(0).values  # noqa: E731  min(Q_i1, Q_i2)(s, x), (N, B)
        q_a, q_data = q(a), q(act)
        return {"n": n, "dist_to_mean": (pis - a).norm(dim=-1).mean(1).tolist(),
                "dist_to_data": (pis - act).norm(dim=-1).mean(1).tolist(),
                "q_mean_action": q_a.mean(1).tolist(), "q_std": float(q_a.std(0, correction=0).mean()),
                "q_data_action": q_data.mean(1).tolist(), "q_std_data": float(q_data.std(0, correction=0).mean()),
                "q_cross": [[float(v) for v in q(pis[j]).mean(1)] for j in range(n)]}  # [actor j][critic i]


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="a balanced_replay.py checkpoint.pt")
    p.add_argument("--states", type=int, default=2048, help="offline states to probe on (default 2048)")
    p.add_argument("--seed", type=int, default=0, help="seed of the state sample (default 0)")
    a = p.parse_args()
    ckpt = br.load_checkpoint(a.checkpoint, None, ensembles=True)
    if "ensemble_size" not in ckpt:
        raise SystemExit(f"error: {a.checkpoint} is not a balanced_replay.py ensemble checkpoint")
    data = load_dataset(ckpt["dataset_id"])
    idx = torch.randint(data.obs.shape[0], (a.states,), generator=torch.Generator().manual_seed(a.seed)).numpy()
    obs = torch.as_tensor((data.obs[idx] - ckpt["obs_mean"]) / ckpt["obs_std"], dtype=torch.float32)
    r = probe(ckpt, obs, torch.as_tensor(data.actions[idx], dtype=torch.float32))
    f = lambda xs: " ".join(f"{x:7.3f}" if abs(x) < 10 else f"{x:7.1f}" for x in xs)  # noqa: E731
    print(f"{a.checkpoint}: {ckpt['phase']} step {ckpt['step']}, {r['n']} members, {a.states} offline states")
    print(f"‖π_j − a‖ per member          {f(r['dist_to_mean'])}")
    print(f"‖π_j − a_data‖ per member     {f(r['dist_to_data'])}")
    print(f"min-twin Q_i(s, a) per member {f(r['q_mean_action'])}   q_std {r['q_std']:.2f}")
    print(f"min-twin Q_i(s, a_data)       {f(r['q_data_action'])}   q_std {r['q_std_data']:.2f}")
    print("Q_i(s, π_j(s)), row j actor, column i critic:")
    for j, row in enumerate(r["q_cross"]):
        print(f"  π_{j}  {f(row)}")
