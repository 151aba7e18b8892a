#!/usr/bin/env bash
# Generates a short clip with sound, styles it with the 'candy' style (or, offline, with the
# clearly labelled 'random' network), and says where the results are.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p out
clip=out/demo-input.mp4
if [ ! -s "$clip" ]; then
    ffmpeg -v error -y -f lavfi -i "mandelbrot=size=320x180:rate=24" -f lavfi -i "sine=frequency=330:beep_factor=4:sample_rate=48000" \
        -t 4 -c:v libx264 -pix_fmt yuv420p -g 48 -c:a aac -b:a 96k -shortest "$clip"
fi
.venv/bin/stylize run "$clip" out/demo-styled.mp4 --model "${STYLE:-candy}" --fallback-model random --batch-frames 32 --workers 2
