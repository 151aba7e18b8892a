"""Temporal stabilisation of styled frames (issue 23): stand-in with the final interface, to be replaced by the stabiliser."""

from __future__ import annotations

import numpy as np


class Stabiliser:
    """Stabilises one stream of consecutive styled frames; state carries across calls until :meth:`reset`."""

    def __init__(self, strength: float = 1.0, *, device: str = "cpu") -> None:
        self.strength, self.device = strength, device

    def reset(self) -> None:
        """Forget the frames seen so far (a batch's context starts)."""

    def __call__(self, inputs: np.ndarray, styled: np.ndarray) -> np.ndarray:
        """``inputs`` (N, h, w, 3) uint8 RGB input frames; ``styled`` (N, H, W, 3) uint8 (H >= h, W >= w) -> (N, H, W, 3) uint8."""
        return styled

    def describe(self) -> dict:
        """What the report says was used (method, strength, flow resolution...)."""
        return {"strength": self.strength}
