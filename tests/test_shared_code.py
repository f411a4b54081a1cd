"""Drift guard for the infrastructure the four scripts share by copy.

Each script is self-contained (networks, buffer, loop and run files in one file; only the data, the safe checkpoint
loader and the evaluation protocol come from offline_data.py, the one shared module), so some code exists in several
copies. This is the one place that names it: every copy must be character-for-character identical, so a fix made in
one script cannot silently miss the others. A script reads: method (Args, networks, update, the method's helpers,
validate, train), then the banner line, then the run-file helpers, the same in every script. Everything in METHOD is
a script's own and may differ.
"""
import ast

import pytest
from conftest import ALGOS

ALL = ("td3_bc", "naive_ft", "conservative_ft", "balanced_replay")
BANNER = "# --- run files: identical in every script (tests/test_shared_code.py) ---"
BELOW_BANNER = ("CHECKPOINT_FORMAT", "Run", "check_flags", "start", "prepare", "rng_state", "restore", "atomic_save",
                "weights_sha256", "run_metadata", "cpu_name")
SHARED = {  # name -> the scripts that hold an identical copy
    **{name: ALL for name in ("EnsembleLinear", "Critic", *BELOW_BANNER)},
    # balanced replay samples from its sum tree instead, its actor is an ensemble (EnsembleActor), and its
    # diagnostics are the ensemble's (ensemble_diagnostics)
    **{name: ("td3_bc", "naive_ft", "conservative_ft") for name in ("Actor", "replay_indices", "diagnostics",
                                                                      "sample")},
}
METHOD = {"Args", "update", "validate", "train", "checkpoint"}  # defined in every script, differ by design


def definitions(script: str) -> dict[str, str]:
    """Source of each top-level class, function and constant, and of the functions defined inside `train`."""
    source = (ALGOS / f"{script}.py").read_text()
    tree = ast.parse(source)
    nodes = list(tree.body)
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "train":
            nodes += [n for n in node.body if isinstance(n, ast.FunctionDef)]
    out = {}
    for node in nodes:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            out[node.name] = ast.get_source_segment(source, node)
        elif isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name) and node.targets[0].id.isupper():
            out[node.targets[0].id] = ast.get_source_segment(source, node)
    return out


DEFS = {script: definitions(script) for script in ALL}


def below_banner(script: str) -> str:
    source = (ALGOS / f"{script}.py").read_text()
    assert source.count(BANNER) == 1, f"{script}.py: the banner line must appear once"
    return source[source.index(BANNER):]


@pytest.mark.parametrize("name", sorted(SHARED))
def test_shared_helpers_are_identical_copies(name):
    copies = {script: DEFS[script].get(name) for script in SHARED[name]}
    missing = [s for s, src in copies.items() if src is None]
    assert not missing, f"{name} is missing from {missing}"
    reference = copies[SHARED[name][0]]
    differ = [s for s, src in copies.items() if src != reference]
    assert not differ, f"{name} differs between {SHARED[name][0]}.py and {differ}: copy the fix to every script"


def test_everything_below_the_banner_is_identical_and_listed():
    """The run-file section is one block, the same text in every script, and every name it defines is listed."""
    reference = below_banner(ALL[0])
    differ = [s for s in ALL[1:] if below_banner(s) != reference]
    assert not differ, f"the section below the banner differs between {ALL[0]}.py and {differ}"
    tree = ast.parse(reference.split("\n", 1)[1])
    names = [n.name if not isinstance(n, ast.Assign) else n.targets[0].id for n in tree.body
             if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.Assign))]
    assert tuple(names) == BELOW_BANNER, names


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


def test_the_method_reads_top_to_bottom():
    """No `global`; no line over 120 characters; the online loop starts within 150 lines of `def update` (balanced
    replay, with its sum tree and density-ratio network in between: 200)."""
    for script in ALL:
        lines = (ALGOS / f"{script}.py").read_text().splitlines()
        assert not [n for n, line in enumerate(lines, 1) if line.strip().startswith("global ")], script
        assert not [n for n, line in enumerate(lines, 1) if len(line) > 120], script
        update = next(n for n, line in enumerate(lines) if line.startswith("def update("))
        loop = next(n for n, line in enumerate(lines) if "for step in range((on_done or 0) + 1" in line)
        assert loop - update <= (200 if script == "balanced_replay" else 150), (script, loop - update)
