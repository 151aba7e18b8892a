"""What the scorer calls: batches of RGB frames in, styled frames of even size out."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

NETWORK_ALIGNMENT = 4
"""Every network here downsamples twice by 2, so it wants sides that are multiples of 4."""

Network = Callable[[np.ndarray], np.ndarray]
"""(N, H, W, 3) uint8 with H and W multiples of 4 -> (N, H, W, 3) float32 in 0..255."""


class FrameStyler:
    """Pads frames to the network's alignment (edge pixels repeated), runs it, crops to even size, mixes, clamps.

    ``strength`` below 1 mixes the styled frame with the original; ``describe()`` says what styles the frames.
    """

    def __init__(self, network: Network | None, description: dict, strength: float = 1.0) -> None:
        self.network = network
        self.strength = strength
        self.description = dict(description)

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 -> (N, even H, even W, 3) uint8."""
        _, height, width, _ = frames.shape
        out_h, out_w = height + height % 2, width + width % 2
        pad_h, pad_w = -height % NETWORK_ALIGNMENT, -width % NETWORK_ALIGNMENT
        padded = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge") if pad_h or pad_w else frames
        if self.network is None:
            return np.ascontiguousarray(padded[:, :out_h, :out_w])
        styled = self.network(padded)[:, :out_h, :out_w]
        if self.strength < 1.0:
            styled = self.strength * styled + (1.0 - self.strength) * padded[:, :out_h, :out_w]
        return np.clip(np.rint(styled), 0, 255).astype(np.uint8)

    def describe(self) -> dict:
        return dict(self.description)
