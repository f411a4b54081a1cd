"""scripts/render.py: a readable GIF of one evaluation episode per checkpoint, side by side, loaded safely."""
import os
import re
import subprocess
import sys

import pytest
from conftest import ROOT

if not os.environ.get("CI"):  # CI installs it: there this test must run
    pytest.importorskip("PIL", reason='render.py needs Pillow: pip install -e ".[plot]"')
from PIL import Image  # noqa: E402

RENDER = ROOT / "scripts" / "render.py"


def render(*argv):
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    return subprocess.run([sys.executable, str(RENDER), *argv], capture_output=True, text=True, env=env, timeout=300)


def test_a_gif_with_one_frame_per_kept_step(pretrained, tmp_path):
    agent = str(pretrained / "offline" / "checkpoint.pt")
    proc = render(agent, agent, "--labels", "a", "b", "--max-steps", "9", "--every", "2", "--size", "64",
                  "--out", str(tmp_path / "x.gif"))
    assert proc.returncode == 0, proc.stderr
    steps = [int(n) for n in re.findall(r"return -?[\d.]+ in (\d+) steps", proc.stdout)]
    assert len(steps) == 2 and steps[0] == steps[1]  # the same agent plays the same episode
    n = steps[0]  # the first frame, every 2nd step, and the last step
    expected = 1 + len([t for t in range(1, n + 1) if t % 2 == 0 or t == n])
    with Image.open(tmp_path / "x.gif") as gif:
        assert gif.size == (128, 64) and gif.n_frames == expected


def test_bad_input_is_one_line(pretrained, tmp_path):
    agent = str(pretrained / "offline" / "checkpoint.pt")
    for argv, message in [((agent, "--labels", "a", "b"), "error: 2 --labels for 1 checkpoints"),
                          ((agent, "--out", str(tmp_path / "x.mp4")), "error: --out must name a .gif file"),
                          ((str(tmp_path / "none.pt"),), "error: cannot read checkpoint")]:
        proc = render(*argv)
        assert proc.returncode == 1 and proc.stderr.strip().startswith(message), proc.stderr
