"""The bare model loop: decode every frame of a clip into memory, then style them one pass each.

    python bench/bare_loop.py CLIP [--model random] [--threads N] [--batch N]

Same decoder and colour conversion as the worker, same styler and engine (``gpu_job.models.load_styler``),
same threads, every stream of the engine busy (``FrameStyler.stream``); no splitting, no encoding, no files. Prints JSON: frames, model_s (styling only), load_s.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("clip")
    parser.add_argument("--model", default="random")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()
    began = time.perf_counter()
    import av
    import numpy as np

    from gpu_job.colour import to_rgb
    from gpu_job.models import load_styler
    from shared.colour import plan_colour
    from shared.config import Settings
    from shared.probe import stream_colour

    styler = load_styler(args.model, "cpu", Settings.from_env().model_cache_dir, threads=args.threads)
    with av.open(args.clip) as container:
        stream = container.streams.video[0]
        plan = plan_colour(stream_colour(stream.codec_context), stream.codec_context.height)
        frames = [to_rgb(f, plan) for f in container.decode(stream)]
    load_s = time.perf_counter() - began
    styled = time.perf_counter()
    for _ in styler.stream(np.stack(frames[i : i + args.batch]) for i in range(0, len(frames), args.batch)):
        pass
    print(json.dumps({"frames": len(frames), "model_s": time.perf_counter() - styled, "load_s": load_s}))


if __name__ == "__main__":
    main()
