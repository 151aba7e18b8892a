from fractions import Fraction

import pytest

from shared.plan import Batch, batch_sizes, plan_batches
from shared.probe import VideoInfo


def _info(frames: int, gop: int, open_gops=()) -> VideoInfo:
    return VideoInfo(
        path="x.mp4", format="mp4", size_bytes=1, codec="h264", width=8, height=8, time_base=Fraction(1, 25),
        frame_pts=list(range(frames)), frame_gop=[i // gop for i in range(frames)], open_gops=list(open_gops),
        last_frame_duration=1, rotation=0,
    )


@pytest.mark.parametrize("frames,batch", [(1, 1), (7, 3), (100, 7), (240, 240), (241, 240), (1000, 64), (5, 100)])
def test_every_frame_in_exactly_one_batch(frames, batch):
    batches = plan_batches(_info(frames, gop=12), batch)
    covered = [i for b in batches for i in range(b.first_frame, b.first_frame + b.frame_count)]
    assert covered == list(range(frames))
    assert all(0 < b.frame_count <= batch for b in batches)
    assert max(b.frame_count for b in batches) - min(b.frame_count for b in batches) <= 1


def test_remainder_frames_are_not_dropped():
    """The reference MPI split lost frames % nodes; 10 frames over 3 batches keeps all 10."""
    assert batch_sizes(10, 4) == [4, 3, 3]
    assert sum(batch_sizes(1001, 100)) == 1001


def test_timestamp_ranges_chain_and_gops_cover_the_frames():
    info = _info(100, gop=30)
    batches = plan_batches(info, 40)
    for before, after in zip(batches, batches[1:]):
        assert before.end_pts == after.start_pts
    assert batches[-1].end_pts == info.frame_pts[-1] + 1, "just past the last shown frame, not the end of the packets"
    for b in batches:
        gops = info.frame_gop[b.first_frame : b.first_frame + b.frame_count]
        assert b.first_gop == min(gops) and b.last_gop == max(gops)


def test_open_gop_pulls_in_the_gop_before():
    batches = plan_batches(_info(90, gop=30, open_gops=[1, 2]), 30)
    assert [(b.first_gop, b.last_gop) for b in batches] == [(0, 0), (0, 1), (1, 2)]


def test_rejects_non_positive_batch_size():
    with pytest.raises(ValueError):
        batch_sizes(10, 0)


def test_a_batch_carries_the_videos_rate_and_refuses_a_bad_one_or_a_bad_context():
    from shared.plan import encoder_rate

    assert encoder_rate(30000 / 1001) == Fraction(30000, 1001) and encoder_rate(0.0) == Fraction(1, 1001)
    batch = Batch(index=1, first_frame=10, frame_count=10, start_pts=10, end_pts=20, time_base="1/25", first_gop=1, last_gop=1,
                  context_pts=6, frame_rate="30000/1001")
    assert Batch.from_dict(batch.to_dict()) == batch
    for field, value in [("frame_rate", "0"), ("frame_rate", "1001/0"), ("frame_rate", 25), ("frame_rate", "100000"),
                         ("context_pts", -10**30), ("context_pts", 10)]:
        with pytest.raises(ValueError):
            Batch.from_dict({**batch.to_dict(), field: value})
