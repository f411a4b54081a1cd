"""The docs a researcher reads: no tabs or other control characters (a TeX command written through a non-raw Python
string loses its backslash: `\\tfrac` becomes a TAB and `frac`, `\\big` a backspace and `ig`), display math
that opens and closes, each default said once in --help, and benchmarks.md's screen table as its script prints it."""
import re
import subprocess
import sys

import pytest
from conftest import ROOT

def tracked() -> list[str]:
    """The repository's files (git ls-files), or, outside a git checkout, the top-level docs and the code folders."""
    try:
        git = subprocess.run(["git", "-C", str(ROOT), "ls-files"], capture_output=True, text=True, check=True)
        files = git.stdout.split()
    except (OSError, subprocess.CalledProcessError):
        files = [str(p.relative_to(ROOT)) for d in ("", "algorithms", "scripts", "tests") for p in (ROOT / d).glob("*")]
    return sorted(p for p in files if p.endswith((".md", ".py", ".toml")))


TEXT = tracked()


@pytest.mark.parametrize("path", TEXT)
def test_no_control_characters(path):
    text = (ROOT / path).read_text(encoding="utf-8")
    bad = [(n, repr(m.group())) for n, line in enumerate(text.split("\n"), 1)
           for m in re.finditer(r"[\x00-\x09\x0b-\x1f\x7f]", line)]
    assert not bad, f"{path}: control characters at (line, char) {bad[:5]}"


@pytest.mark.parametrize("path", [p for p in TEXT if p.endswith(".md")])
def test_display_math_is_closed(path):
    assert (ROOT / path).read_text(encoding="utf-8").count("$$") % 2 == 0, f"{path}: an unclosed $$ block"


@pytest.mark.parametrize("path", [p for p in TEXT if p.startswith(("algorithms/", "scripts/")) and p.endswith(".py")])
def test_help_says_each_default_once(path):
    """tyro ends every flag's --help with "(default: X)": a field docstring of an Args class that says "(default ..."
    itself makes --help say it twice (a None default's meaning is written "(None: ...)")."""
    text = (ROOT / path).read_text(encoding="utf-8")
    args = text.split("\nclass Args", 1)[1].split("\n\n\n")[0] if "\nclass Args" in text else ""
    assert "(default" not in args, f"{path}: {[line.strip() for line in args.splitlines() if '(default' in line]}"


def test_screen_table_is_what_screen_py_prints():
    """benchmarks.md section 7's table is screen.py's output on the committed run files, with the command written
    above it (the same folders): a changed run file or a hand-edited cell fails."""
    text = (ROOT / "benchmarks.md").read_text(encoding="utf-8")
    command = re.search(r"python scripts/screen\.py --narrow (\S+) \\\n\s+(\S+)", text)
    assert command, "benchmarks.md: no screen.py command"
    head, tail = command[2].split("{")
    inner, end = tail.split("}")
    folders = [command[1]] + [head + name + end for name in inner.split(",")]
    out = subprocess.run([sys.executable, str(ROOT / "scripts/screen.py"), "--narrow", *folders], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    assert len(out.splitlines()) == 2 + len(folders)
    for line in out.splitlines():
        assert line in text.splitlines(), f"benchmarks.md lacks screen.py's row {line}"
