"""The 2019 reference architecture's method, on one machine: FFmpeg dumps every frame to a JPEG file,
one process styles the files one by one (eager fp32 PyTorch, batch 1) and writes JPEGs, FFmpeg
re-encodes them and copies the original audio back.

    python bench/reference_2019.py CLIP OUT.mp4 [--threads N]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("clip")
    parser.add_argument("out")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    import av
    import numpy as np
    import torch
    from PIL import Image

    from gpu_job.models import random_transformer

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        frames_in, frames_out = Path(scratch) / "in", Path(scratch) / "out"
        frames_in.mkdir()
        frames_out.mkdir()
        subprocess.run(["ffmpeg", "-v", "error", "-i", args.clip, "-q:v", "2", str(frames_in / "%06d.jpg")], check=True)
        model = random_transformer().eval()
        with torch.inference_mode():
            for image_path in sorted(frames_in.iterdir()):
                rgb = np.asarray(Image.open(image_path).convert("RGB"))
                h, w = rgb.shape[:2]
                x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float()
                x = torch.nn.functional.pad(x, (0, -w % 4, 0, -h % 4), mode="replicate")
                y = model(x)[0, :, :h, :w].clamp(0, 255).byte().permute(1, 2, 0).numpy()
                Image.fromarray(y).save(frames_out / image_path.name, quality=95)
        with av.open(args.clip) as container:
            rate = str(container.streams.video[0].average_rate)
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-framerate", rate, "-i", str(frames_out / "%06d.jpg"), "-i", args.clip,
                        "-map", "0:v", "-map", "1:a?", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "copy", args.out], check=True)


if __name__ == "__main__":
    main()
