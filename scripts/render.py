"""A video of the agent: one deterministic evaluation episode of each checkpoint, side by side, as a GIF.

    python scripts/render.py runs/<run>/checkpoint.pt --out agent.gif
    python scripts/render.py pretrain.pt naive.pt conservative.pt --labels "pretrained" "naive TD3" "conservative"

Each checkpoint is loaded as safely as the scripts load it (offline_data.load_checkpoint: CRC-32s, then
weights_only; nothing in the file runs) and plays episode 0 of the evaluation protocol (seeded from (--seed, 0),
the deterministic actor, the checkpoint's own state normalization) in the environment the checkpoint records, so
the picture is the evaluation that scored it. A balanced-replay checkpoint plays its ensemble's policy (the mean
action). An episode that ends early holds its last frame. MuJoCo renders offscreen: on a machine without a display
set MUJOCO_GL=egl (Debian/Ubuntu: libegl1) or MUJOCO_GL=osmesa (libosmesa6); this script picks egl if neither
MUJOCO_GL nor a display is set. Needs Pillow (`pip install -e ".[plot]"`).
"""
from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

import tyro

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "algorithms"))


@dataclasses.dataclass
class Args:
    checkpoints: tyro.conf.Positional[tuple[str, ...]]
    """checkpoint.pt files of any of the four scripts (one panel each, left to right)"""
    out: str = "agent.gif"
    """the GIF to write"""
    labels: tuple[str, ...] | None = None
    """a title per panel (None: the checkpoint's script, phase and step)"""
    seed: int = 0
    """the evaluation seed: the episode is the one evaluation episode 0 of a run with this --seed plays"""
    max_steps: int = 1000
    """stop each episode after this many steps"""
    every: int = 4
    """keep every this many environment steps as a frame (the GIF's size grows with the frame count)"""
    fps: int = 20
    """frames per second of the GIF"""
    size: int = 200
    """width and height of each panel, in pixels"""


def episode(ckpt: dict, args: Args) -> tuple[list, float, int]:
    """Frames (every --every steps, the first and last included), return and length of episode 0 of the evaluation."""
    import gymnasium as gym
    import numpy as np
    import torch
    from gymnasium.envs.registration import EnvSpec

    spec = EnvSpec.from_json(ckpt["env_spec"])
    env = gym.make(spec, render_mode="rgb_array", width=args.size, height=args.size)
    if "track" in [env.unwrapped.model.camera(i).name for i in range(env.unwrapped.model.ncam)]:
        env.close()  # MuJoCo locomotion models have a camera that follows the body: the agent stays in view
        env = gym.make(spec, render_mode="rgb_array", width=args.size, height=args.size, camera_name="track")
    max_action = torch.as_tensor(env.action_space.high, dtype=torch.float32)
    obs_dim, act_dim, hidden = ckpt["obs_shape"][0], ckpt["act_shape"][0], ckpt["args"]["hidden"]
    if ckpt.get("ensemble_size"):  # balanced replay: the ensemble's policy
        from balanced_replay import EnsembleActor

        actor = EnsembleActor(obs_dim, act_dim, max_action, hidden, n=ckpt["ensemble_size"])
    else:
        from td3_bc import Actor

        actor = Actor(obs_dim, act_dim, max_action, hidden)
    actor.load_state_dict(ckpt["actor"])
    obs = env.reset(seed=int(np.random.SeedSequence([args.seed, 0]).generate_state(1)[0]))[0]
    frames, ret, steps, done = [env.render()], 0.0, 0, False
    while not done and steps < args.max_steps:
        with torch.no_grad():
            x = torch.as_tensor((obs - ckpt["obs_mean"]) / ckpt["obs_std"], dtype=torch.float32)
            obs, reward, terminated, truncated, _ = env.step(actor(x[None])[0].numpy())
        ret, steps, done = ret + float(reward), steps + 1, terminated or truncated
        if steps % args.every == 0 or done or steps == args.max_steps:
            frames.append(env.render())
    env.close()
    return frames, ret, steps


def main(args: Args) -> None:
    from offline_data import load_checkpoint

    if not args.checkpoints:
        raise SystemExit("error: give at least one checkpoint")
    if args.labels and len(args.labels) != len(args.checkpoints):
        raise SystemExit(f"error: {len(args.labels)} --labels for {len(args.checkpoints)} checkpoints")
    for name in ("max_steps", "every", "fps", "size"):
        if getattr(args, name) <= 0:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    if not Path(args.out).suffix.lower() == ".gif":
        raise SystemExit(f"error: --out must name a .gif file, got {args.out}")
    try:
        from PIL import Image, ImageDraw
    except ImportError:
        raise SystemExit('error: render.py needs Pillow: pip install -e ".[plot]"') from None
    if "MUJOCO_GL" not in os.environ and not os.environ.get("DISPLAY") and sys.platform.startswith("linux"):
        os.environ["MUJOCO_GL"] = "egl"
    panels = []
    for i, path in enumerate(args.checkpoints):
        ckpt = load_checkpoint(path, None, ensembles=True)
        try:
            frames, ret, steps = episode(ckpt, args)
        except Exception as e:  # a missing GL library, mostly: one line that says what to install
            why = str(e).splitlines()[0] if str(e) else ""
            raise SystemExit(f"error: cannot render {path}: {type(e).__name__}: {why} (headless: MUJOCO_GL=egl with "
                             f"libegl1, or MUJOCO_GL=osmesa with libosmesa6)") from None
        label = args.labels[i] if args.labels else \
            f"{ckpt.get('algorithm', 'agent')} {ckpt.get('phase', '')} {ckpt.get('step', '')}".strip()
        print(f"{path}: return {ret:.1f} in {steps} steps ({label})")
        panels.append((frames, label))
    images = []
    for t in range(max(len(frames) for frames, _ in panels)):
        canvas = Image.new("RGB", (args.size * len(panels), args.size))
        for i, (frames, label) in enumerate(panels):
            panel = Image.fromarray(frames[min(t, len(frames) - 1)])
            ImageDraw.Draw(panel).text((4, 4), label, fill=(255, 255, 255))
            canvas.paste(panel, (i * args.size, 0))
        images.append(canvas)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    images[0].save(args.out, save_all=True, append_images=images[1:], duration=round(1000 / args.fps), loop=0,
                   optimize=True)
    print(f"wrote {args.out}: {len(images)} frames, {Path(args.out).stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main(tyro.cli(Args, description=__doc__.split("\n\n")[0]))
