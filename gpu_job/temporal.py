"""Temporal stabilisation of styled frames (issue 23): training-free, after the model, on any style.

For each frame t the previous *output* is warped to frame t with optical flow computed on the *input* frames
(OpenCV's DIS, at a bounded working size), with a sharp interpolation so that repeated warps keep the texture sharp
(Catmull-Rom, below), and blended with the freshly styled frame. The blend weight is ``strength * MAX_WEIGHT``
(times the fidelity budget's scale, below) where the flow is trusted and falls to 0 where it is not: where the
forward-backward check fails (occlusions, disocclusions, flow errors), where the warped previous input does not match
the current one (photometric check), near those regions, where the motion is large, and out of the frame. When too
little of a frame passes the checks (a scene cut), it is not blended at all.

Two things keep the stabilised frames true to the style (bench/RESULTS.md). A fidelity budget scales the weight down
for styles whose texture boils: it holds the blend's running mean squared difference from the freshly styled frames
to FIDELITY_DB, so a calm style keeps MAX_WEIGHT and a boiling one gets what the budget allows; a frame that would
fall more than FRAME_MARGIN_DB under it is blended again, nearer its styled frame. And a blend of two
textures has less contrast than either, so the output gets an unsharp mask in proportion to each pixel's weight
(RESTORE); the frame carried on to the next one is the plain blend.

The warp is Catmull-Rom (the bicubic that reproduces a quadratic) on the luma, computed as a bilinear warp (OpenCV's
vectorised remap, twice as fast as its scalar bicubic) plus a correction: in one dimension, Catmull-Rom at the fraction
f between two pixels is the linear interpolation minus f(1 - f)/2 times the linear interpolation of the second
difference, and the second difference of the bilinear warp stands for the warp of the second difference where the flow
is smooth (exactly, for a constant shift; in two dimensions the small cross term is left out). The correction is taken
on the luma and applied to every channel, as the contrast restoring is: the luma comes within 0.06 grey RMS of the
exact kernel's on a test texture under a smooth flow, the chroma as the bilinear warp leaves it (bench/RESULTS.md). The
eye sees detail in the luma, video carries the chroma at half the resolution, and correcting each channel measured the
same.

The weight is computed at the working size on the CPU; the warp and the blend run at the styled size, with
OpenCV on the CPU or with torch (``grid_sample``) on ``device`` "cuda" (or, for tests, torch on the CPU).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import cv2
import numpy as np

from shared.errors import InvalidInputError

if TYPE_CHECKING:
    import torch

FLOW_LONG_SIDE = 640
"""The flow's working size: the input's long side is brought down to this (never up), so its cost is bounded; a thin
frame keeps MIN_FLOW_SIDE on its short side instead, where it has that many, up to MAX_WORKING_LONG_SIDE."""
MAX_WORKING_LONG_SIDE = 4 * FLOW_LONG_SIDE
"""The working size's long side when a thin frame keeps MIN_FLOW_SIDE across (1920x60 works at 1024x32): at most this,
so a strip's flow costs no more than a 640x360 frame's (thinner strips are styled frame by frame)."""
MAX_WEIGHT = 0.9
"""The previous output's weight where the flow is fully trusted, at strength 1, before the fidelity budget scales it:
higher removes more flicker but moves further from per-frame styling (PSNR) and lags more (bench/RESULTS.md)."""
FIDELITY_DB = 26.0
"""The fidelity budget, as a PSNR (1 dB over the issue's floor of 25): the weight is scaled so that the blend's running
mean squared difference from the freshly styled frames (before the contrast is restored) stays within it. A style
whose texture changes little from frame to frame keeps MAX_WEIGHT; holding a boiling texture still enough to stop it
boiling would move every frame away from what the style paints, so such a style gets less. Each frame is blended at
the scale the frames before it left (FRAME_MARGIN_DB keeps the one where that falls short)."""
FRAME_MARGIN_DB = 1.0
"""How far under the budget any one output frame may fall, its contrast restored (25 dB at the default budget: the
issue's floor, for every frame; a frame still under it when blended again is output as styled). A frame that the
scale of the frames before it would put further off (the first blend of a scene, after a reset, a cut or a change of
frame size; the frame where a texture starts to boil within a shot) is blended again at the scale that holds it to
FIDELITY_DB: a linear step between its blend and its styled frame, with no second warp."""
FIDELITY_SMOOTHING = 0.2
"""How much of the running mean a frame's squared difference replaces when it is lower (about 5 frames; a higher one
replaces it at once): the weight drops as soon as the texture boils more, and comes back over a few frames, since a
weight that jumped from frame to frame would make flicker of its own."""
RESTORE = 0.35
"""Contrast given back to the output: a blend of two textures has less contrast (gradient energy) than either, so the
output gets an unsharp mask of its luma (the luma's difference from its 3x3 mean) of RESTORE times each pixel's
weight (none where nothing was blended)."""
LUMA = (0.299, 0.587, 0.114)
"""RGB to luma, as OpenCV's COLOR_RGB2GRAY: the contrast is restored in the luma, where the eye sees detail."""
MOTION_SCALE = 8.0
"""Motion (working-size pixels per frame) at which the weight halves: fast motion leans on the fresh frame."""
PHOTOMETRIC_TOLERANCE = 40.0
"""Difference (0..255 grey) between the current input and the warped previous input at which the weight reaches 0."""
CONSISTENCY_RELATIVE, CONSISTENCY_ABSOLUTE = 0.01, 0.5
"""Forward-backward check (Sundaram et al. 2010, as in Ruder et al. 2016): a pixel is occluded where
|b + f(x + b)|^2 > CONSISTENCY_RELATIVE * (|b|^2 + |f(x + b)|^2) + CONSISTENCY_ABSOLUTE (working-size pixels)."""
MARGIN = 1
"""Working-size pixels around a rejected region that are rejected too (a flow that fails its checks at a pixel is often
wrong beside it), and over which the weight then ramps back up (no seam where the blend starts)."""
FLOW_REFINEMENT = 3
"""Variational refinement iterations of both DIS flows (the FAST preset, which has 5): 1.2 ms less per frame for an
E_warp 0.002-0.008 higher (bench/RESULTS.md); none at all fails good flow in the checks."""
FLOW_PATCH_STRIDE = 5
"""Working-size pixels between DIS's patches (the FAST preset's 4), the same on both flows (on one alone the checks trust
less): 1.1 ms less per frame at any frame size, `stylize run` with the stabiliser x1.10-1.13 of without it against
x1.14-1.15, for E_warp ratios 0.002 higher on average over 26 styles (bench/RESULTS.md)."""
MIN_FLOW_SIDE = 32
"""DIS builds an image pyramid: under this many working-size pixels on a side, OpenCV crashes or refuses the frame, so
such frames are styled frame by frame (a strip or a thumbnail has little texture to flicker anyway)."""
CUT_FRACTION = 0.35
"""A frame where less than this fraction of the pixels passes both checks starts a new scene: no blend."""
INSIDE = 0.999
"""The checks' remap reads a plane of ones with 0 outside the frame: a place whose bilinear taps all lie in the frame
reads 1, one with a tap outside reads 1 minus that tap's weight. So a place within 0.001 px of the frame counts as
inside (the tiny flows DIS leaves at a still edge), one further out does not."""
ENGINES = ("auto", "opencv", "torch")
STRIP_ROWS = 64
"""Rows the OpenCV path warps, blends and rounds at a time (about 1.5 MB of float32 at 1920 wide for the blend, as much
again for the fresh frame and the contrast restoring's buffers: they stay in the caches from the warp to the rounding)."""


class Stabiliser:
    """Stabilises one stream of consecutive styled frames; state carries across calls until :meth:`reset`.

    Deterministic: the same frames after a reset give the same output.
    ``engine`` "auto" warps and blends with torch on CUDA and with OpenCV on the CPU; "torch" forces torch
    (on ``device``), "opencv" forces OpenCV (CPU only).
    """

    def __init__(self, strength: float = 1.0, *, device: str = "cpu", flow_long_side: int = FLOW_LONG_SIDE,
                 max_weight: float = MAX_WEIGHT, fidelity_db: float | None = FIDELITY_DB, restore: float = RESTORE,
                 engine: str = "auto", frame_margin_db: float = FRAME_MARGIN_DB) -> None:
        """``fidelity_db`` None: no budget (the weight is ``strength * max_weight`` wherever the flow is trusted);
        ``restore`` 0: the plain blend; ``frame_margin_db`` 0: each frame held to the budget itself. The benchmarks
        compare those with the defaults."""
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"temporal strength must be between 0 and 1, got {strength}")
        if not 0.0 <= max_weight <= 1.0 or not 0.0 <= restore <= 1.0 or not (fidelity_db is None or 0.0 < fidelity_db < 100.0):
            raise ValueError(f"max_weight and restore must be between 0 and 1 and fidelity_db between 0 and 100 dB or None, "
                             f"got {max_weight}, {restore}, {fidelity_db}")
        if not 0.0 <= frame_margin_db < 100.0:
            raise ValueError(f"frame_margin_db must be between 0 and 100 dB, got {frame_margin_db}")
        kind = str(device).split(":")[0]
        if kind not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        if engine not in ENGINES or (engine == "opencv" and kind == "cuda"):
            raise ValueError(f"engine must be one of {ENGINES} ('opencv' only on the CPU), got {engine!r}")
        self.strength, self.device, self.flow_long_side, self.max_weight = strength, device, flow_long_side, max_weight
        self.fidelity_db, self.restore = fidelity_db, restore
        self._budget = None if fidelity_db is None else 255.0**2 * 10.0 ** (-fidelity_db / 10.0)  # mean squared, 0..255
        self._floor = None if fidelity_db is None else self._budget * 10.0 ** (frame_margin_db / 10.0)  # the most for one frame
        self.engine = ("torch" if kind == "cuda" else "opencv") if engine == "auto" else engine
        if self.engine == "opencv":  # beside inference, which keeps every core busy: one thread, no contention (bench/RESULTS.md)
            cv2.setNumThreads(1)
        self._flow, self._check_flow = (dis_flow() for _ in range(2))  # ULTRAFAST failed good flow (bench/RESULTS.md)
        self._grids: dict[tuple[int, int], np.ndarray] = {}
        self._terms: dict[tuple[int, int], tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]] = {}
        self._buffers: dict[str, np.ndarray] = {}
        self._luma = None  # LUMA as a torch tensor on the device, made once
        self._full_weight: np.ndarray | torch.Tensor | None = None  # the last blend's weight at the styled size, for a reblend
        self._current: torch.Tensor | None = None  # the torch path's last styled frame on the device, for a reblend
        self.cuts = self.too_small = self.reblended = 0
        self.reset()

    def reset(self) -> None:
        """Forget the frames seen so far (a batch's context starts)."""
        self._previous_grey: np.ndarray | None = None
        self._previous_output = None  # float32 (H, W, 3) array, or a torch tensor (1, 3, H, W) on the device
        self._previous_size: tuple[int, ...] = ()
        self._scale = 1.0  # the fidelity budget's factor on the weight, for the next blended frame
        self._mean_square: float | None = None  # the scene's running mean squared difference from the fresh frame, at scale 1

    def __call__(self, inputs: np.ndarray, styled: np.ndarray) -> np.ndarray:
        """``inputs`` (N, H, W, 3) uint8 RGB input frames; ``styled`` (N, H, W, 3) uint8, their styled frames -> (N, H, W, 3) uint8."""
        if inputs.ndim != 4 or inputs.shape[-1] != 3 or inputs.shape != styled.shape:
            raise ValueError(f"inputs {inputs.shape} and styled {styled.shape} must both be (N, H, W, 3), the same shape")
        if self.strength == 0.0:
            return styled
        out = np.empty(styled.shape, np.uint8)  # C-contiguous whatever the styled frames' layout: OpenCV writes into it
        try:
            for frame, styled_frame, out_frame in zip(inputs, styled, out):
                self._frame(frame, styled_frame, out_frame)
        except cv2.error as exc:  # OpenCV answers the same frames the same way (but for memory): an error that will repeat
            if exc.code == cv2.Error.StsNoMem:
                raise
            reason = next((line.strip() for line in str(exc).splitlines() if "error:" in line), "OpenCV error")
            raise InvalidInputError(f"temporal stabilisation failed on {inputs.shape[2]}x{inputs.shape[1]} frames ({reason}); "
                                    "--temporal off styles them frame by frame") from None
        return out

    def describe(self) -> dict:
        """What the report says was used (method, strength, flow resolution...)."""
        return {"method": "flow-warped blend of the previous output (OpenCV DIS flow on the inputs, Catmull-Rom warp)",
                "strength": self.strength, "max_weight": self.max_weight, "fidelity_db": self.fidelity_db,
                "restore": self.restore, "flow_long_side": self.flow_long_side,
                "warp": f"{self.engine} on {self.device}", "scene_cuts": self.cuts,
                "too_small_frames": self.too_small, "reblended_frames": self.reblended}

    def _frame(self, frame: np.ndarray, styled: np.ndarray, out: np.ndarray) -> None:
        """Stabilises one frame into ``out`` (uint8, the styled frame's shape)."""
        grey = self._working_grey(frame)
        if min(grey.shape) < MIN_FLOW_SIDE:
            self.too_small += 1
            self._previous_grey = None
            out[...] = styled
            return
        previous_grey, self._previous_grey = self._previous_grey, grey
        if previous_grey is None or previous_grey.shape != grey.shape or self._previous_size != styled.shape:
            self._keep(styled, out)
            return
        flow, weight = self._flow_and_weight(previous_grey, grey)
        if weight is None:
            self.cuts += 1
            self._keep(styled, out)
            return
        weight *= self.strength * self.max_weight
        scale = self._scale
        weight *= scale
        mean_square = self._blend(flow, weight, styled, out) / styled.size / max(scale * scale, 1e-12)  # at scale 1
        shown = None if self._budget is None else self._shown(out, styled)
        if shown is not None and shown > self._floor:
            self._reblend((self._budget / shown) ** 0.5, styled, out)
            if self._shown(out, styled) > self._floor:  # the restoring sharpened the styled frame's own detail past it
                self._reblend(0.0, styled, out)  # (clipped where it overshoots): the styled frame as it is
            self.reblended += 1
        self._spend_budget(mean_square)

    @staticmethod
    def _shown(out: np.ndarray, styled: np.ndarray) -> float:
        """The output frame's mean squared difference from its styled frame, as it is output (its contrast restored)."""
        return cv2.norm(out, styled, cv2.NORM_L2SQR) / styled.size

    def _blend(self, flow: np.ndarray, weight: np.ndarray, styled: np.ndarray, out: np.ndarray) -> float:
        """Blends the warped previous output into ``styled`` with ``weight`` (working size): the next frame's previous
        output, and ``out`` (its contrast restored); returns the blend's sum of squared differences from ``styled``."""
        blend = self._blend_torch if self.engine == "torch" else self._blend_opencv
        return blend(flow, weight, styled, out)

    def _reblend(self, ratio: float, styled: np.ndarray, out: np.ndarray) -> None:
        """The last blend again with its weight times ``ratio`` (0 to 1): the same warp, so the blend moves in a line to
        ``styled`` (``styled + ratio * (blend - styled)``), and ``out`` again from it, whose difference from ``styled``
        shrinks about as ``ratio`` (the restoring's term is the weight times the blend's high band); at 0, ``out`` is
        ``styled``."""
        reblend = self._reblend_torch if self.engine == "torch" else self._reblend_opencv
        reblend(ratio, styled, out)

    def _spend_budget(self, mean_square: float) -> None:
        """The next frame's scale from this frame's mean squared difference from the fresh frame (had its scale been 1:
        the difference is the weight times the warped-minus-fresh difference) and the running mean before it."""
        if self._budget is None:
            return
        previous = self._mean_square
        if previous is None or mean_square > previous:
            self._mean_square = mean_square
        else:
            self._mean_square = previous + FIDELITY_SMOOTHING * (mean_square - previous)
        self._scale = min(1.0, (self._budget / max(self._mean_square, 1e-12)) ** 0.5)

    def _keep(self, styled: np.ndarray, out: np.ndarray) -> None:
        """The styled frame as it is: the next frame's previous output. A scene starts here (a stream's first frame, a
        new size, a cut), and its texture may boil more or less than the last one's: its first blend is at full weight
        (blended again at the budget's scale if that puts it under the floor) and starts the scene's running mean."""
        self._mean_square, self._scale = None, 1.0
        self._previous_size = styled.shape
        if self.engine == "torch":
            self._previous_output = self._tensor(styled)
        else:
            self._previous_output = styled.astype(np.float32, order="C")  # a copy: it becomes a buffer written later
        out[...] = styled

    def _buffer(self, name: str, shape: tuple[int, ...], dtype: type = np.float32, fill: float | None = None) -> np.ndarray:
        """An array kept across frames (fresh full-size arrays every frame cost page faults, not arithmetic); ``fill``:
        the value it is made with, for one whose values are never written."""
        buffer = self._buffers.get(name)
        if buffer is None or buffer.shape != shape or buffer.dtype != dtype:
            buffer = self._buffers[name] = np.empty(shape, dtype) if fill is None else np.full(shape, fill, dtype)
        return buffer

    def _working_grey(self, frame: np.ndarray) -> np.ndarray:
        height, width = frame.shape[:2]
        grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        scale = max(self.flow_long_side / max(height, width),
                    min(MIN_FLOW_SIDE / min(height, width), MAX_WORKING_LONG_SIDE / max(height, width)))
        if scale >= 1.0:
            return grey
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        return cv2.resize(grey, size, interpolation=cv2.INTER_AREA)

    def _grid(self, height: int, width: int) -> np.ndarray:
        """(height, width, 2) float32 pixel coordinates (x, y), kept per size."""
        grid = self._grids.get((height, width))
        if grid is None:
            grid = self._grids[(height, width)] = np.dstack(np.meshgrid(np.arange(width, dtype=np.float32),
                                                                         np.arange(height, dtype=np.float32)))
        return grid

    def _flow_and_weight(self, previous: np.ndarray, current: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The flow from ``current`` back to ``previous`` (working size) and the blend weight 0..1 there, or None at a cut.

        Every plane is a buffer kept across frames (but the two flows: DIS would take a given one as its first guess),
        so the checks cost the same whatever the allocator does: where it hands fresh planes' memory back to the system
        every frame, their page faults took the checks from 2.6 to 7.7 ms at 640x360 (bench/RESULTS.md)."""
        backward = self._flow.calc(current, previous, None)
        forward = self._check_flow.calc(previous, current, None)
        height, width = current.shape
        plane, mask = ((lambda name, dtype=dtype: self._buffer(name, (height, width), dtype)) for dtype in (np.float32, bool))
        where = cv2.add(backward, self._grid(height, width), dst=self._buffer("where", (height, width, 2)))  # (x, y) there
        # What the checks read there, in one remap (OpenCV's vectorised path for four channels): the forward flow, the
        # previous frame, and ones that fall under 1 where the place is out of the frame (its border reads as 0).
        stacked = self._buffer("stacked", (height, width, 4), fill=1.0)  # its last channel stays ones
        previous_float, current_float = plane("previous float"), plane("current float")
        np.copyto(previous_float, previous)
        np.copyto(current_float, current)
        cv2.mixChannels([forward, previous_float], [stacked], [0, 0, 1, 1, 2, 2])
        sampled = cv2.remap(stacked, where, None, cv2.INTER_LINEAR, dst=self._buffer("sampled", (height, width, 4)),
                            borderMode=cv2.BORDER_CONSTANT)
        forward_x, forward_y, warped_previous, inside = cv2.split(
            sampled, [plane("forward x"), plane("forward y"), plane("warped previous"), plane("inside")])
        backward_x, backward_y = cv2.split(backward, [plane("backward x"), plane("backward y")])
        backward_sq = _length_sq(backward_x, backward_y, plane("backward sq"), plane("square"))
        round_trip_sq = _length_sq(np.add(backward_x, forward_x, out=plane("round trip x")),
                                   np.add(backward_y, forward_y, out=plane("round trip y")), plane("round trip sq"), plane("square"))
        bound = np.add(backward_sq, _length_sq(forward_x, forward_y, plane("forward sq"), plane("square")), out=plane("forward sq"))
        bound *= CONSISTENCY_RELATIVE
        bound += CONSISTENCY_ABSOLUTE
        trusted = np.less_equal(round_trip_sq, bound, out=mask("trusted"))
        trusted &= np.greater(inside, INSIDE, out=mask("test"))
        difference = cv2.absdiff(current_float, warped_previous, dst=plane("photometric"))
        ones = self._buffer("ones", (height, width), fill=1.0)
        photometric = cv2.max(cv2.scaleAdd(difference, -1.0 / PHOTOMETRIC_TOLERANCE, ones, dst=difference), 0.0, dst=difference)
        matching = np.greater(photometric, 0.5, out=mask("test"))
        if np.count_nonzero(np.logical_and(trusted, matching, out=matching)) < CUT_FRACTION * trusted.size:
            return backward, None
        weight = np.multiply(photometric, trusted, out=photometric)
        backward_sq /= MOTION_SCALE**2
        backward_sq += 1.0
        weight /= backward_sq
        return backward, _keep_off_rejections(weight, plane("eroded"))

    def _warp_maps(self, flow: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """Where each pixel comes from in the previous output (x and y maps): its coordinates plus the working-size
        flow brought to the frame's size (vectors scaled).

        A map is linear in the coordinates, so it is built at the working size (coordinates as the resize carries
        them, plus the scaled flow) and resized once: no full-size grid and no full-size additions. The resize holds
        its edge samples where it would read outside the working size; the few rows and columns where that differs
        from the coordinates are corrected."""
        work_height, work_width = flow.shape[:2]
        maps = []
        for axis, size, work_size in ((0, width, work_width), (1, height, work_height)):
            coordinates, (edge_indices, edge_offsets) = self._axis_terms(size, work_size)
            plane = np.multiply(flow[..., axis], np.float32(size / work_size), out=self._buffer(f"working map{axis}", flow.shape[:2]))
            plane += np.expand_dims(coordinates, axis)
            if (height, width) != (work_height, work_width):
                plane = cv2.resize(plane, (width, height), dst=self._buffer(f"map{axis}", (height, width)),
                                   interpolation=cv2.INTER_LINEAR)
                (plane if axis == 0 else plane.T)[:, edge_indices] += edge_offsets
            maps.append(plane)
        return maps[0], maps[1]

    def _axis_terms(self, size: int, work_size: int) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
        """For one axis of the maps, kept per size: the working-size coordinates that a linear resize to ``size``
        turns into the full-size ones (OpenCV samples full-size pixel x at working-size (x + 0.5) / s - 0.5, s the
        scale), and the full-size coordinates where the resize holds its edge sample instead, with what that leaves out."""
        terms = self._terms.get((size, work_size))
        if terms is None:
            scale = size / work_size
            coordinates = (np.arange(work_size) * scale + (scale - 1) / 2).astype(np.float32)
            full = np.arange(size)
            sampled = np.clip((full + 0.5) / scale - 0.5, 0, work_size - 1)
            missing = full - (sampled * scale + (scale - 1) / 2)  # 0 (but for rounding) where the resize interpolates
            held = np.flatnonzero(np.abs(missing) > 1e-6)
            terms = self._terms[(size, work_size)] = (coordinates, (held, missing[held].astype(np.float32)))
        return terms

    def _blend_opencv(self, flow: np.ndarray, weight: np.ndarray, styled: np.ndarray, out: np.ndarray) -> float:
        """Warps the previous output (Catmull-Rom) and blends it in, in buffers kept across frames and in strips of rows
        that stay in the cache from the warp to the rounding; the blend is the next frame's previous output (not
        clipped: repeated warps overshoot an edge by 6-7 % of its step, and the output saturates when it is
        rounded), ``out`` gets it rounded, with its contrast restored. Returns the blend's sum of squared differences
        from ``styled``."""
        height, width = styled.shape[:2]
        map_x, map_y = self._warp_maps(flow, height, width)
        if weight.shape != (height, width):
            weight = cv2.resize(weight, (width, height), dst=self._buffer("weight", (height, width)), interpolation=cv2.INTER_LINEAR)
        self._full_weight = weight
        warped = self._buffer("warped", styled.shape)
        inverse = self._buffer("inverse", (STRIP_ROWS, width))
        correction = self._buffer("correction", (STRIP_ROWS, width, 3))
        square_sum = 0.0
        for rows, fresh, (start, stop) in self._strips(styled):
            count = len(fresh)
            above, below = min(rows.start, 1), min(height - rows.stop, 1)  # the rows either side that there are
            around = slice(rows.start - above, rows.stop + below)
            bilinear = cv2.remap(self._previous_output, map_x[around], map_y[around], cv2.INTER_LINEAR,
                                 dst=self._buffer("bilinear", (STRIP_ROWS + 2, width, 3))[: count + above + below],
                                 borderMode=cv2.BORDER_REPLICATE)
            term = self._catmull_rom_term(bilinear, above, count, map_x[rows], map_y[rows], weight[rows])
            blended = warped[rows]
            cv2.blendLinear(bilinear[above: above + count], fresh, weight[rows],
                            cv2.subtract(1.0, weight[rows], dst=inverse[:count]), dst=blended)
            cv2.subtract(blended, cv2.cvtColor(term, cv2.COLOR_GRAY2RGB, dst=correction[:count]), dst=blended)
            square_sum += cv2.norm(blended, fresh, cv2.NORM_L2SQR)
            self._finish_rows(warped, start, stop, out, 1.0)
        self._buffers["warped"], self._previous_output = self._previous_output, warped  # the old one is the next frame's buffer
        return square_sum

    def _catmull_rom_term(self, bilinear: np.ndarray, above: int, count: int, map_x: np.ndarray, map_y: np.ndarray,
                          weight: np.ndarray) -> np.ndarray:
        """What turns a strip's bilinear warp into Catmull-Rom on the luma, times the blend weight, to subtract from every
        channel: the second differences of its luma across and down, each times f(1 - f)/2 of its axis' fractional
        coordinate (``map_x``, ``map_y``: the strip's rows of the maps). ``bilinear`` holds the strip's ``count`` rows
        after ``above`` rows before them, and any row after them."""
        rows, width = len(bilinear), bilinear.shape[1]
        luma = cv2.cvtColor(bilinear, cv2.COLOR_RGB2GRAY, dst=self._buffer("warped luma", (STRIP_ROWS + 2, width))[:rows])
        term = cv2.filter2D(luma[above: above + count], -1, _SECOND_ACROSS, borderType=cv2.BORDER_REPLICATE,
                            dst=self._buffer("second across", (STRIP_ROWS, width))[:count])
        cv2.multiply(term, self._fraction_product(map_x, "fraction x"), dst=term)
        second_down = cv2.filter2D(luma, -1, _SECOND_DOWN, borderType=cv2.BORDER_REPLICATE,
                                   dst=self._buffer("second down", (STRIP_ROWS + 2, width))[:rows])[above: above + count]
        cv2.add(term, cv2.multiply(second_down, self._fraction_product(map_y, "fraction y"), dst=second_down), dst=term)
        return cv2.multiply(term, weight, dst=term, scale=0.5)

    def _fraction_product(self, coordinates: np.ndarray, name: str) -> np.ndarray:
        """f(1 - f), f the fractional part of each coordinate, in a buffer kept as ``name``."""
        count, width = coordinates.shape
        fraction = np.floor(coordinates, out=self._buffer(name, (STRIP_ROWS, width))[:count])
        cv2.subtract(coordinates, fraction, dst=fraction)
        square = cv2.multiply(fraction, fraction, dst=self._buffer("fraction squared", (STRIP_ROWS, width))[:count])
        return cv2.subtract(fraction, square, dst=fraction)

    def _reblend_opencv(self, ratio: float, styled: np.ndarray, out: np.ndarray) -> None:
        """The blend moved in place toward ``styled``, strip by strip, and rounded into ``out`` again."""
        blended = self._previous_output
        for rows, fresh, (start, stop) in self._strips(styled):
            cv2.addWeighted(blended[rows], ratio, fresh, 1.0 - ratio, 0.0, dst=blended[rows])
            self._finish_rows(blended, start, stop, out, ratio)

    def _strips(self, styled: np.ndarray):
        """The OpenCV path's strips of rows: for each, its rows, the styled strip in float32, and the rows of the output
        to round once the strip is blended (``start``, ``stop``).

        The restoring unsharp mask reads each row's neighbours, so each strip rounds the rows up to the one before its
        last (whose neighbour below is the next strip's first row): the output lags the blend by a row."""
        height = styled.shape[0]
        fresh = self._buffer("fresh", (STRIP_ROWS, *styled.shape[1:]))
        done = 0
        for top in range(0, height, STRIP_ROWS):
            bottom = min(top + STRIP_ROWS, height)
            ready = bottom if bottom == height or not self.restore else bottom - 1
            yield slice(top, bottom), cv2.multiply(styled[top:bottom], 1.0, dst=fresh[: bottom - top], dtype=cv2.CV_32F), (done, ready)
            done = ready

    def _finish_rows(self, blended: np.ndarray, start: int, stop: int, out: np.ndarray, weight_scale: float) -> None:
        """Rows ``start:stop`` of the blend rounded (and saturated) into ``out``, their contrast restored: plus
        ``restore`` times the weight (times ``weight_scale``) times the high band of their luma (itself minus its 3x3
        mean), on every channel."""
        rows = slice(start, stop)
        if not self.restore:
            cv2.multiply(blended[rows], 1.0, dst=out[rows], dtype=cv2.CV_8U)  # rounds and saturates to uint8
            return
        count, width = stop - start, blended.shape[1]
        above, below = min(start, 1), min(len(blended) - stop, 1)  # the neighbour rows there are
        luma = cv2.cvtColor(blended[start - above: stop + below], cv2.COLOR_RGB2GRAY,
                            dst=self._buffer("luma", (STRIP_ROWS + 2, width))[: count + above + below])
        detail = cv2.filter2D(luma, -1, HIGH_BAND, borderType=cv2.BORDER_REPLICATE,
                              dst=self._buffer("detail", (STRIP_ROWS + 2, width))[: count + above + below])[above: above + count]
        cv2.multiply(detail, self._full_weight[rows], dst=detail, scale=self.restore * weight_scale)
        added = cv2.cvtColor(detail, cv2.COLOR_GRAY2RGB, dst=self._buffer("added", (STRIP_ROWS, width, 3))[:count])
        cv2.add(blended[rows], added, dst=out[rows], dtype=cv2.CV_8U)  # rounds and saturates to uint8

    def _tensor(self, styled: np.ndarray) -> torch.Tensor:
        import torch

        return torch.from_numpy(np.ascontiguousarray(styled)).to(self.device).permute(2, 0, 1)[None].float()

    def _blend_torch(self, flow: np.ndarray, weight: np.ndarray, styled: np.ndarray, out: np.ndarray) -> float:
        import torch
        import torch.nn.functional as F

        height, width = styled.shape[:2]
        work_height, work_width = flow.shape[:2]
        scale = torch.tensor([width / work_width, height / work_height], device=self.device).view(1, 2, 1, 1)
        small = torch.from_numpy(np.ascontiguousarray(np.dstack([flow, weight]).transpose(2, 0, 1)[None])).to(self.device)
        full = F.interpolate(small, size=(height, width), mode="bilinear", align_corners=False)
        flow_full, self._full_weight = full[:, :2] * scale, full[:, 2:].contiguous()
        fraction = flow_full - flow_full.floor()  # of the coordinates too: theirs are whole
        factors = (0.5 * fraction * (1.0 - fraction)) * self._full_weight
        ys, xs = torch.meshgrid(torch.arange(height, device=self.device, dtype=torch.float32),
                                torch.arange(width, device=self.device, dtype=torch.float32), indexing="ij")
        grid = torch.stack([(xs + flow_full[0, 0]) * (2.0 / max(width - 1, 1)) - 1.0,
                            (ys + flow_full[0, 1]) * (2.0 / max(height - 1, 1)) - 1.0], dim=-1)[None]
        warped = F.grid_sample(self._previous_output, grid, mode="bilinear", padding_mode="border", align_corners=True)
        luma = F.pad((warped * self._luma_weights()).sum(dim=1, keepdim=True), (1, 1, 1, 1), mode="replicate")
        centre = luma[..., 1:-1, 1:-1]
        correction = (factors[:, :1] * (luma[..., 1:-1, :-2] - 2.0 * centre + luma[..., 1:-1, 2:])
                      + factors[:, 1:] * (luma[..., :-2, 1:-1] - 2.0 * centre + luma[..., 2:, 1:-1]))
        self._current = current = self._tensor(styled)
        difference = self._full_weight * (warped - current) - correction
        self._previous_output = current + difference
        self._finish_torch(out, 1.0)
        return float(difference.square().sum())

    def _reblend_torch(self, ratio: float, styled: np.ndarray, out: np.ndarray) -> None:
        current = self._current  # ``styled`` on the device, from the blend
        self._previous_output = current + ratio * (self._previous_output - current)
        self._finish_torch(out, ratio)

    def _luma_weights(self) -> torch.Tensor:
        """LUMA as a (1, 3, 1, 1) tensor on the device, made once."""
        import torch

        if self._luma is None:
            self._luma = torch.tensor(LUMA, device=self.device).view(1, 3, 1, 1)
        return self._luma

    def _finish_torch(self, out: np.ndarray, weight_scale: float) -> None:
        """The blend rounded into ``out``, its contrast restored as on the OpenCV path: the luma's difference from its
        3x3 mean (edges replicated) times ``restore`` times the weight (times ``weight_scale``), on every channel."""
        import torch
        import torch.nn.functional as F

        blended = self._previous_output
        if self.restore:
            luma = (blended * self._luma_weights()).sum(dim=1, keepdim=True)
            mean = F.avg_pool2d(F.pad(luma, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
            blended = blended + (self.restore * weight_scale) * self._full_weight * (luma - mean)
        out[...] = blended.clamp(0.0, 255.0).round()[0].permute(1, 2, 0).to(torch.uint8).cpu().numpy()


def dis_flow() -> cv2.DISOpticalFlow:
    """A DIS flow as FLOW_REFINEMENT and FLOW_PATCH_STRIDE say."""
    flow = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_FAST)
    flow.setVariationalRefinementIterations(FLOW_REFINEMENT)
    flow.setPatchStride(FLOW_PATCH_STRIDE)
    return flow


_SECOND_ACROSS = np.array([[1.0, -2.0, 1.0]], np.float32)
_SECOND_DOWN = _SECOND_ACROSS.T.copy()
"""Second differences across and down, the Catmull-Rom correction's filters."""
HIGH_BAND = np.full((3, 3), -1.0 / 9.0, np.float32) + np.pad(np.ones((1, 1), np.float32), 1)
"""A pixel minus its 3x3 mean, the contrast restoring's high band, as one filter."""


def _keep_off_rejections(weight: np.ndarray, out: np.ndarray) -> np.ndarray:
    """The weight (float32) rejected MARGIN pixels around each rejected pixel, then ramped back up over MARGIN pixels: a
    rejected pixel stays at 0, one 2 * MARGIN + 1 pixels from any keeps its weight. Into ``out`` (not ``weight``)."""
    side = 2 * MARGIN + 1
    eroded = cv2.erode(weight, np.ones((side, side), np.uint8), dst=out, borderType=cv2.BORDER_REPLICATE)
    return cv2.blur(eroded, (side, side), dst=eroded, borderType=cv2.BORDER_REPLICATE)


def _length_sq(x: np.ndarray, y: np.ndarray, out: np.ndarray, scratch: np.ndarray) -> np.ndarray:
    """x * x + y * y into ``out`` (``scratch``: a buffer of its shape for y * y)."""
    np.multiply(x, x, out=out)
    return np.add(out, np.multiply(y, y, out=scratch), out=out)

