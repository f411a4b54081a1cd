"""Drift guard for the infrastructure the four scripts share by copy.

Each script is self-contained (networks, buffer, loop and run files in one file), so the helpers below exist in
several copies. This is the one place that names them: every copy must be character-for-character identical, so
a fix made in one script cannot silently miss the others. Everything else a script defines (Args, validate,
update, and the methods' own helpers) is its method and may differ.
"""
import ast

import pytest
from conftest import ALGOS

ALL = ("td3_bc", "naive_ft", "conservative_ft", "balanced_replay")
SHARED = {  # name -> the scripts that hold an identical copy
    **{name: ALL for name in (
        "EnsembleLinear", "Critic",  # networks
        "evaluate", "collapse_summary", "run_metadata", "cpu_name",  # evaluation and run records
        "CHECKPOINT_FORMAT", "atomic_save", "load_checkpoint", "weights_sha256",  # checkpoints
        "load_run", "resume_args", "reopen", "save_online_rows", "load_online_rows",  # --resume
        "replay_episode",  # the online env mid-episode
        "nan_guard",  # inside the main block
    )},
    # balanced replay samples from its sum tree instead, and its actor is an ensemble (EnsembleActor)
    **{name: ("td3_bc", "naive_ft", "conservative_ft") for name in ("Actor", "replay_indices", "sample")},
}
METHOD = {"Args", "update", "validate", "checkpoint", "log"}  # defined in every script, differ by design


def definitions(script: str) -> dict[str, str]:
    """Source of each top-level class, function and constant, and of the functions in the `__main__` block."""
    source = (ALGOS / f"{script}.py").read_text()
    tree = ast.parse(source)
    nodes = list(tree.body)
    for node in tree.body:
        if isinstance(node, ast.If):  # if __name__ == "__main__":
            nodes += [n for n in node.body if isinstance(n, ast.FunctionDef)]
    out = {}
    for node in nodes:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            out[node.name] = ast.get_source_segment(source, node)
        elif isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name) and node.targets[0].id.isupper():
            out[node.targets[0].id] = ast.get_source_segment(source, node)
    return out


DEFS = {script: definitions(script) for script in ALL}


@pytest.mark.parametrize("name", sorted(SHARED))
def test_shared_helpers_are_identical_copies(name):
    copies = {script: DEFS[script].get(name) for script in SHARED[name]}
    missing = [s for s, src in copies.items() if src is None]
    assert not missing, f"{name} is missing from {missing}"
    reference = copies[SHARED[name][0]]
    differ = [s for s, src in copies.items() if src != reference]
    assert not differ, f"{name} differs between {SHARED[name][0]}.py and {differ}: copy the fix to every script"


def test_every_name_defined_twice_is_listed():
    """A helper that appears in two scripts is either shared (and checked above) or part of a method."""
    seen = {}
    for script, defs in DEFS.items():
        for name in defs:
            seen.setdefault(name, []).append(script)
    unlisted = {n: s for n, s in seen.items() if len(s) > 1 and n not in SHARED and n not in METHOD}
    assert not unlisted, f"list these in SHARED (identical copies) or METHOD (differ by design): {unlisted}"
    for name, scripts in SHARED.items():  # and the list names no script that lacks the helper
        assert set(seen.get(name, [])) == set(scripts), name
