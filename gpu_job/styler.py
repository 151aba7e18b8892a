"""What the scorer calls: batches of RGB frames in, styled frames of the same size out."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import numpy as np

NETWORK_ALIGNMENT = 4
"""Every network here downsamples twice by 2, so it wants sides that are multiples of 4."""

T, A, B = TypeVar("T"), TypeVar("A"), TypeVar("B")
Network = Callable[[Iterable[np.ndarray]], Iterator[np.ndarray]]
"""Batches (N, H, W, 3) uint8 with H and W multiples of 4 -> (N, H, W, 3) float32 in 0..255, one per batch, in order."""


class FrameStyler:
    """Pads frames to the network's alignment (edge pixels repeated), runs it, crops to the frames' size, mixes, clamps.

    ``strength`` below 1 mixes the styled frame with the original; ``describe()`` says what styles the frames.
    ``stream`` styles batch after batch with the engine's streams all busy; calling it styles one batch.
    """

    def __init__(self, network: Network | None, description: dict, strength: float = 1.0) -> None:
        self.network = network
        self.strength = strength
        self.description = dict(description)

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 -> (N, H, W, 3) uint8."""
        (styled,) = self.stream([frames])
        return styled

    def stream(self, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Each batch styled, in order; the next batches are read while earlier ones are being styled."""
        if self.network is None:
            yield from (np.ascontiguousarray(frames) for frames in batches)
            return
        padded = ((frames, _pad(frames)) for frames in batches)
        for (frames, padded_frames), styled in paired(padded, lambda pair: pair[1], self.network):
            styled = _crop(styled, frames)
            if self.strength < 1.0:
                styled = self.strength * styled + (1.0 - self.strength) * _crop(padded_frames, frames)
            yield np.clip(np.rint(styled), 0, 255).astype(np.uint8)

    def describe(self) -> dict:
        return dict(self.description)


def paired(items: Iterable[T], key: Callable[[T], A], run: Callable[[Iterable[A]], Iterator[B]]) -> Iterator[tuple[T, B]]:
    """Each item with the output ``run`` gives for its ``key``: ``run`` maps inputs to outputs in order, reading
    ahead of what it has given back, so each item waits beside its output's turn."""
    waiting: deque[T] = deque()

    def inputs() -> Iterator[A]:
        for item in items:
            waiting.append(item)
            yield key(item)

    for output in run(inputs()):
        yield waiting.popleft(), output


def _pad(frames: np.ndarray) -> np.ndarray:
    _, height, width, _ = frames.shape
    pad_h, pad_w = -height % NETWORK_ALIGNMENT, -width % NETWORK_ALIGNMENT
    return np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge") if pad_h or pad_w else frames


def _crop(padded: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """``padded`` cut to ``frames``'s size."""
    _, height, width, _ = frames.shape
    return padded[:, :height, :width]
