"""The output container rule, on probe results (no video is made here)."""

from __future__ import annotations

from fractions import Fraction

import pytest

from shared.containers import ISO_CODECS, ffmpeg_muxes, output_container, segment_muxer
from shared.errors import InvalidInputError
from shared.probe import TrackInfo, VideoInfo

MP4_SOURCE, MKV_SOURCE = "mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm"


def _info(*tracks: TrackInfo, source: str = MP4_SOURCE, codec: str = "h264") -> VideoInfo:
    return VideoInfo(path="in", format=source, size_bytes=1, codec=codec, width=64, height=36, time_base=Fraction(1, 25),
                     frame_pts=[0], frame_gop=[0], open_gops=[], last_frame_duration=1, rotation=0, tracks=list(tracks))


def _audio(codec: str, index: int = 1, trimmed: bool = False) -> TrackInfo:
    return TrackInfo(index=index, kind="audio", codec=codec, trimmed=trimmed)


def _subtitles(codec: str, index: int = 2) -> TrackInfo:
    return TrackInfo(index=index, kind="subtitle", codec=codec)


@pytest.mark.parametrize("muxer", list(ISO_CODECS))
def test_every_codec_the_iso_lists_admit_is_one_ffmpeg_writes(muxer):
    assert [codec for codec in sorted(ISO_CODECS[muxer]) if not ffmpeg_muxes(muxer, codec)] == []


@pytest.mark.parametrize("asked,tracks,source,expected,said", [
    (".mp4", [_audio("aac", trimmed=True)], MP4_SOURCE, ".mp4", None),
    (".MP4", [_audio("aac")], MP4_SOURCE, ".mp4", None),
    (".mkv", [_audio("aac", trimmed=True)], MP4_SOURCE, ".mp4", ".mkv cannot hold aac audio with skipped samples; writing .mp4 instead"),
    (".mp4", [_audio("opus", trimmed=True)], MKV_SOURCE, ".mkv", ".mp4 cannot hold opus audio with skipped samples; writing .mkv instead"),
    (".mp4", [_audio("opus")], "mpegts", ".mp4", None),
    (".mp4", [_audio("pcm_s16le")], MP4_SOURCE, ".mkv", ".mp4 cannot hold pcm_s16le audio; writing .mkv instead"),
    (".mov", [_audio("pcm_s16le"), _subtitles("mov_text")], MP4_SOURCE, ".mov", None),
    (".mp4", [_audio("aac"), _subtitles("subrip")], MKV_SOURCE, ".mkv", ".mp4 cannot hold subrip subtitles; writing .mkv instead"),
    (".webm", [_audio("vorbis", trimmed=True)], MKV_SOURCE, ".mkv", ".webm cannot hold h264 video; writing .mkv instead"),
    (".avi", [], "avi", ".mkv", ".avi cannot hold h264 video; writing .mkv instead"),
    (None, [_audio("aac", trimmed=True), _subtitles("mov_text")], MP4_SOURCE, ".mp4", None),
    (None, [_audio("opus", trimmed=True)], MKV_SOURCE, ".mkv", None),
    (None, [_audio("pcm_s24le"), _subtitles("mov_text")], "avi", ".mov", None),
])
def test_the_asked_container_is_kept_where_it_holds_every_track(asked, tracks, source, expected, said):
    choice = output_container(_info(*tracks, source=source), asked)
    assert choice.suffix == expected and choice.tracks == tracks
    assert [note for note in choice.notes if "instead" in note] == ([said] if said else [])


def test_subtitles_no_container_holds_with_the_audio_are_left_out_and_said():
    info = _info(_audio("pcm_s16le"), _subtitles("mov_text"), _subtitles("subrip", 3), source="avi")
    choice = output_container(info, ".mkv")
    assert choice.suffix == ".mkv" and [t.codec for t in choice.tracks] == ["pcm_s16le", "subrip"]
    assert ".mkv cannot hold stream 2 (mov_text subtitles); left out" in choice.notes


def test_further_video_streams_are_kept_where_they_fit_and_said():
    choice = output_container(_info(_audio("aac"), TrackInfo(index=3, kind="video", codec="vp8")), ".mp4")
    assert choice.suffix == ".mp4" and [t.codec for t in choice.tracks] == ["aac"]
    assert ".mp4 cannot hold stream 3 (vp8 video); left out" in choice.notes
    kept = output_container(_info(TrackInfo(index=3, kind="video", codec="mpeg4")), ".mp4")
    assert kept.notes == ["only the primary video stream (stream 0) is styled; stream 3 (mpeg4 video) copied unchanged"]


def test_audio_no_container_holds_is_refused():
    with pytest.raises(InvalidInputError, match="no output container holds all of its audio tracks"):
        output_container(_info(_audio("aac", trimmed=True, index=1), _audio("opus", trimmed=True, index=2), source="ogg"))


def test_segments_keep_exact_timestamps_in_iso_where_it_holds_the_codec():
    assert [segment_muxer(codec) for codec in ("h264", "hevc", "av1", "vp9", "prores", "vp8")] == ["mp4", "mp4", "mp4", "mp4", "mov", "nut"]
