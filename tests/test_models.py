from __future__ import annotations

import hashlib
import http.server
import io
import re
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from gpu_job.models import TransformerWeights, load_styler, load_transformer, random_transformer, transformer_styler
from gpu_job import resolve
from gpu_job.resolve import ModelUnavailableError, resolve_model
from gpu_job.styles import PRETRAINED_STYLES
from shared.errors import PipelineError


def _save_examples_checkpoint(model: torch.nn.Module, path: Path) -> Path:
    """Save as pytorch/examples did with old PyTorch: a plain state dict plus InstanceNorm running stats."""
    state = model.state_dict()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.InstanceNorm2d):
            state[f"{name}.running_mean"] = torch.zeros(module.num_features)
            state[f"{name}.running_var"] = torch.ones(module.num_features)
    torch.save(state, path)
    return path


def test_examples_checkpoint_with_legacy_keys_gives_same_output(tmp_path):
    model = random_transformer(seed=7).eval()
    path = _save_examples_checkpoint(model, tmp_path / "style.pth")
    assert any("running_mean" in key for key in torch.load(path, weights_only=True))
    frames = np.random.default_rng(0).integers(0, 256, size=(2, 36, 52, 3), dtype=np.uint8)
    loaded = load_styler(str(path), "cpu", tmp_path, precision="fp32")
    assert loaded.describe()["style"] == "style"
    in_memory = TransformerWeights("in memory", "in-memory-seed7", lambda: model)
    assert np.array_equal(transformer_styler(in_memory, "cpu", tmp_path / "elsewhere", "fp32")(frames), loaded(frames))


def test_converted_network_is_cached_and_read_back_without_torch(tmp_path):
    frames = np.random.default_rng(2).integers(0, 256, size=(1, 36, 52, 3), dtype=np.uint8)
    np.save(tmp_path / "frames.npy", frames)
    first = load_styler("random", "cpu", tmp_path, precision="fp32")(frames)
    cached = list((tmp_path / "openvino").glob("random-*.xml"))
    assert len(cached) == 1 and cached[0].with_suffix(".bin").stat().st_size > 1_000_000
    code = ("import sys, numpy as np; from pathlib import Path; from gpu_job.models import load_styler; folder = Path(sys.argv[1]); "
            "styled = load_styler('random', 'cpu', folder, precision='fp32')(np.load(folder / 'frames.npy')); "
            "np.save(folder / 'again.npy', styled); print('torch' in sys.modules)")
    again = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "False", "a converted network is read back without importing PyTorch"
    assert np.array_equal(np.load(tmp_path / "again.npy"), first)


def test_random_model_is_seeded_and_changes_frames(tmp_path):
    a, b = random_transformer(), random_transformer()
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    frames = np.full((1, 16, 16, 3), 128, dtype=np.uint8)
    assert not np.array_equal(load_styler("random", "cpu", tmp_path)(frames), frames)


def test_identity_styler_keeps_odd_sizes(tmp_path):
    """Frames are padded to the networks' alignment and cropped back to their own size (odd sizes are kept, issue 22)."""
    frames = np.random.default_rng(1).integers(0, 256, size=(3, 75, 129, 3), dtype=np.uint8)
    out = load_styler("identity", "cpu", tmp_path)(frames)
    assert out.shape == frames.shape and np.array_equal(out, frames)


def test_bad_checkpoints_give_one_line_errors(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(PipelineError, match="cannot be read"):
        load_transformer(str(junk))
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv1.conv2d.weight": torch.zeros(1)}, wrong)
    with pytest.raises(PipelineError, match="not a TransformerNet state dict"):
        load_transformer(str(wrong))
    with pytest.raises(PipelineError, match="unknown model"):
        resolve_model("picasso", tmp_path)
    with pytest.raises(PipelineError, match="no such file"):
        resolve_model(str(tmp_path / "missing.pth"), tmp_path)


@pytest.fixture()
def weights_server():
    """A loopback HTTP server publishing an archive laid out like the published saved_models.zip (random networks);
    yields its URL, each checkpoint's sha256, the requests it answered, and a way to change what it serves."""
    def archive(seed_offset: int = 0) -> tuple[bytes, dict[str, str]]:
        buffer, digests = io.BytesIO(), {}
        with zipfile.ZipFile(buffer, "w") as bundle:
            for seed, style in enumerate(PRETRAINED_STYLES):
                data = io.BytesIO()
                torch.save(random_transformer(seed=seed + seed_offset).state_dict(), data)
                bundle.writestr(f"saved_models/{style}.pth", data.getvalue())
                digests[style] = hashlib.sha256(data.getvalue()).hexdigest()
        return buffer.getvalue(), digests

    served = {"stated": True}
    served["payload"], digests = archive()
    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            payload = served["payload"]
            self.send_response(200)
            if served["stated"]:
                stated = served["stated"] if isinstance(served["stated"], str) else str(len(payload))
                self.send_header("Content-Length", stated)
            self.end_headers()
            try:
                self.wfile.write(payload)
            except ConnectionError:  # the client stopped reading
                pass

        def log_message(self, *args):
            pass

    def serve_other(other: bool = True, stated: bool | str = True, payload: bytes | None = None) -> None:
        """Serve archives of other networks (or the same ones, or ``payload``), with the Content-Length header (or that
        text in it) or without it."""
        served["payload"] = payload if payload is not None else archive(seed_offset=10 if other else 0)[0]
        served["stated"] = stated

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/saved_models.zip", digests, hits, serve_other
    server.shutdown()


def _pin(monkeypatch, pins: dict) -> None:
    monkeypatch.setattr(resolve, "PUBLISHED_CHECKPOINT_SHA256", pins, raising=False)


def _sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_named_style_is_fetched_verified_and_cached(weights_server, tmp_path, monkeypatch):
    url, digests, hits, _ = weights_server
    _pin(monkeypatch, digests)
    path = resolve_model("mosaic", tmp_path, url=url)
    assert Path(path).name == "mosaic.pth" and len(hits) == 1
    assert sorted(p.name for p in tmp_path.glob("*.pth")) == sorted(f"{s}.pth" for s in PRETRAINED_STYLES)
    expected = random_transformer(seed=PRETRAINED_STYLES.index("mosaic"))
    assert all(torch.equal(a, b) for a, b in zip(load_transformer(path).state_dict().values(), expected.state_dict().values()))
    resolve_model("candy", tmp_path, url=url)
    assert len(hits) == 1, "a cached style must not be downloaded again"


def test_a_published_style_that_does_not_match_its_pin_is_refused_and_nothing_cached(weights_server, tmp_path):
    """Issue 20: a published checkpoint was accepted whatever its content. Against the real pins, the server's
    (random) checkpoints are refused, and nothing reaches the cache."""
    url, _, hits, _ = weights_server
    with pytest.raises(PipelineError, match=r"style 'candy' .* has sha256 [0-9a-f]{64}, not its pinned [0-9a-f]{64}; refusing it"):
        resolve_model("candy", tmp_path, url=url)
    assert len(hits) == 1 and not list(tmp_path.glob("**/*.pth"))


def test_a_cached_checkpoint_that_changed_is_fetched_again_and_a_changed_download_refused(weights_server, tmp_path, monkeypatch):
    url, digests, hits, serve_other = weights_server
    _pin(monkeypatch, digests)
    cached = Path(resolve_model("candy", tmp_path, url=url))
    data = cached.read_bytes()
    cached.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    assert resolve_model("candy", tmp_path, url=url) == str(cached) and len(hits) == 2, "a cached file off its pin is fetched again"
    assert _sha256(cached) == digests["candy"]
    cached.write_bytes(b"tampered")
    serve_other()
    with pytest.raises(PipelineError, match="refusing it"):
        resolve_model("candy", tmp_path, url=url)
    assert cached.read_bytes() == b"tampered" and len(hits) == 3, "refused, and the download did not replace it"


def test_a_style_archive_over_its_bound_is_refused_from_its_stated_size_and_nothing_kept(weights_server, tmp_path, monkeypatch):
    url, digests, hits, _ = weights_server
    _pin(monkeypatch, digests)
    monkeypatch.setattr(resolve, "STYLE_ARCHIVE_MAX_BYTES", 1000)
    with pytest.raises(PipelineError, match=r"^the style archive at \S+ is \d+ bytes, more than the 1000 it may be$"):
        resolve_model("candy", tmp_path, url=url)
    assert len(hits) == 1 and list(tmp_path.iterdir()) == []


def test_a_style_archive_of_unstated_size_is_read_only_up_to_its_bound(weights_server, tmp_path, monkeypatch):
    url, digests, hits, serve_other = weights_server
    _pin(monkeypatch, digests)
    serve_other(other=False, stated=False)
    assert Path(resolve_model("candy", tmp_path, url=url)).name == "candy.pth", "a body without Content-Length is read whole"
    monkeypatch.setattr(resolve, "STYLE_ARCHIVE_MAX_BYTES", 1000)
    with pytest.raises(PipelineError, match=r"^the style archive at \S+ is more than the 1000 bytes it may be$"):
        resolve_model("mosaic", tmp_path / "other", url=url)
    assert len(hits) == 2 and list((tmp_path / "other").iterdir()) == []


def test_a_style_archive_stating_a_size_that_is_no_number_is_read_within_the_bound(weights_server, tmp_path, monkeypatch):
    """A Content-Length of '\u00b2' (a digit to str.isdigit, not to int) is no stated size: the download is bounded as it comes."""
    url, digests, hits, serve_other = weights_server
    _pin(monkeypatch, digests)
    serve_other(other=False, stated="\u00b2")
    assert Path(resolve_model("candy", tmp_path, url=url)).name == "candy.pth"


def test_a_style_archive_holding_a_style_twice_is_refused(weights_server, tmp_path, monkeypatch):
    """Each member is bounded, and so is the archive's whole inflated size: one checkpoint a style."""
    url, digests, hits, serve_other = weights_server
    _pin(monkeypatch, digests)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as bundle:
        for copy in range(2):
            bundle.writestr(f"saved_models/{copy}/candy.pth", bytes(1000))
    serve_other(payload=buffer.getvalue())
    with pytest.raises(PipelineError, match=r"^the style archive holds more than one checkpoint of candy$"):
        resolve_model("candy", tmp_path, url=url)
    assert list(tmp_path.iterdir()) == []


def test_a_style_archive_member_over_its_bound_refuses_the_archive_unread(weights_server, tmp_path, monkeypatch):
    url, digests, hits, _ = weights_server
    _pin(monkeypatch, digests)
    monkeypatch.setattr(resolve, "CHECKPOINT_MAX_BYTES", 1000)
    reads = []
    monkeypatch.setattr(zipfile.ZipFile, "read", lambda self, name, pwd=None: reads.append(name))
    with pytest.raises(PipelineError, match=r"^the style archive's saved_models/\w+\.pth is \d+ bytes, more than the 1000 a checkpoint may be$"):
        resolve_model("candy", tmp_path, url=url)
    assert reads == [] and list(tmp_path.iterdir()) == []


def test_an_unpinned_style_is_not_downloaded(weights_server, tmp_path, monkeypatch):
    url, digests, hits, _ = weights_server
    _pin(monkeypatch, {**digests, "udnie": None})
    with pytest.raises(ModelUnavailableError, match=r"style 'udnie' has no pinned sha256 .* --model /path/to/udnie\.pth"):
        resolve_model("udnie", tmp_path, url=url)
    assert hits == [] and not list(tmp_path.glob("*.pth"))


def test_every_published_style_has_a_sha256_pin_or_none():
    pins = resolve.PUBLISHED_CHECKPOINT_SHA256
    assert set(pins) == set(PRETRAINED_STYLES)
    assert all(pin is None or re.fullmatch(r"[0-9a-f]{64}", pin) for pin in pins.values())


def test_offline_style_says_how_to_pass_a_checkpoint(tmp_path):
    with pytest.raises(ModelUnavailableError, match=r"--model /path/to/udnie\.pth") as refused:
        resolve_model("udnie", tmp_path, url="http://127.0.0.1:9/saved_models.zip")
    assert str(tmp_path) not in str(refused.value), "no local path in an error a caller may see"
