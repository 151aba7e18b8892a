"""How many bytes of attachments a file holds (Matroska attachments, MP4/MOV cover art), from headers alone.

FFmpeg reads every attachment into memory while it opens the file, whether or not anyone wants it:
the Matroska demuxer copies it more than once (a 120 MB font costs 861 MB), the MOV demuxer reads cover
art into a packet (a 45 MB cover: 98-141 MB). In Matroska, attachments sit in one ``Attachments``
element of the segment, found by walking the segment's top-level elements up to the first cluster and
by following its ``SeekHead`` entries, as the demuxer does; in MP4 and QuickTime, cover art is the
``covr`` item of the ``moov/udta/meta/ilst`` (or ``moov/meta/ilst``) metadata. Only element and box headers and seek entries
are read here, a few bytes each.
"""

from __future__ import annotations

import os
from typing import BinaryIO

EBML_MAGIC = b"\x1a\x45\xdf\xa3"
SEGMENT = 0x18538067
SEEK_HEAD = 0x114D9B74
SEEK = 0x4DBB
SEEK_ID = 0x53AB
SEEK_POSITION = 0x53AC
ATTACHMENTS = 0x1941A469
CLUSTER = 0x1F43B675
MAX_ELEMENTS = 4096
"""Top-level elements and seek entries looked at, at most (a hostile file may list any number)."""
MAX_SEEK_ENTRY_BYTES = 64
ISO_TOP_LEVEL = {b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"uuid"}
"""Box types an MP4 or QuickTime file may start with."""
COVER_PATHS = ((b"moov", b"udta", b"meta", b"ilst", b"covr"), (b"moov", b"meta", b"ilst", b"covr"))
"""Where cover art is (each box inside the one before): iTunes-style metadata in MP4, QuickTime's own in MOV."""


def attachment_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes in the attachments of the Matroska (or WebM) file, or the cover art of the MP4 or QuickTime file, at
    ``path``; 0 for any other file. An ``Attachments`` element of unknown size counts as reaching the end of the file."""
    with open(path, "rb") as file:
        end = file.seek(0, os.SEEK_END)
        file.seek(0)
        magic = file.read(8)
        if magic[4:8] in ISO_TOP_LEVEL:
            return _cover_art(file, 0, end, ())
        if magic[:4] != EBML_MAGIC:
            return 0
        position = 0
        while (element := _header(file, position, end)) is not None:
            element_id, data, size = element
            if element_id == SEGMENT:
                return _segment_attachments(file, data, end if size is None else min(end, data + size))
            if size is None:
                return 0
            position = data + size
    return 0


def _segment_attachments(file: BinaryIO, start: int, end: int) -> int:
    total, seen, pending = 0, set(), []
    position, looked_at = start, 0
    while looked_at < MAX_ELEMENTS and (element := _header(file, position, end)) is not None:
        element_id, data, size = element
        if element_id == CLUSTER:
            break
        pending.append(position)
        if size is None:
            break
        position, looked_at = data + size, looked_at + 1
    while pending and len(seen) < MAX_ELEMENTS:
        position = pending.pop()
        if position in seen or (element := _header(file, position, end)) is None:
            continue
        seen.add(position)
        element_id, data, size = element
        stop = end if size is None else min(end, data + size)
        if element_id == ATTACHMENTS:
            total += stop - data
        elif element_id == SEEK_HEAD:
            pending += [start + offset for offset in _seek_positions(file, data, stop) if start + offset < end]
    return total


def _seek_positions(file: BinaryIO, start: int, end: int) -> list[int]:
    """The segment offsets a SeekHead gives for the Attachments element and for further SeekHeads."""
    positions, position = [], start
    while len(positions) < MAX_ELEMENTS and (element := _header(file, position, end)) is not None:
        element_id, data, size = element
        if size is None:
            break
        if element_id == SEEK and size <= MAX_SEEK_ENTRY_BYTES:
            file.seek(data)
            fields = _children(file.read(size))
            if fields.get(SEEK_ID) in (ATTACHMENTS.to_bytes(4, "big"), SEEK_HEAD.to_bytes(4, "big")) and SEEK_POSITION in fields:
                positions.append(int.from_bytes(fields[SEEK_POSITION], "big"))
        position = data + size
    return positions


def _children(body: bytes) -> dict[int, bytes]:
    """The child elements of a small master element, by id."""
    children, position = {}, 0
    while position < len(body):
        parsed = _parse_header(body[position : position + 12])
        if parsed is None or parsed[2] is None:
            break
        element_id, length, size = parsed
        children[element_id] = body[position + length : position + length + size]
        position += length + size
    return children


def _header(file: BinaryIO, position: int, end: int) -> tuple[int, int, int | None] | None:
    """(id, where its data starts, data size or None if unknown) of the element at ``position``; None past ``end`` or if malformed."""
    if position >= end:
        return None
    file.seek(position)
    parsed = _parse_header(file.read(12))
    if parsed is None:
        return None
    element_id, length, size = parsed
    return element_id, position + length, size


def _parse_header(head: bytes) -> tuple[int, int, int | None] | None:
    """(id, header length, data size or None if unknown) from the start of ``head``."""
    id_length = _vint_length(head, 0, 4)
    if id_length is None:
        return None
    size_length = _vint_length(head, id_length, 8)
    if size_length is None:
        return None
    element_id = int.from_bytes(head[:id_length], "big")
    raw = int.from_bytes(head[id_length : id_length + size_length], "big")
    value_bits = 7 * size_length
    size = raw & ((1 << value_bits) - 1)
    return element_id, id_length + size_length, None if size == (1 << value_bits) - 1 else size


def _vint_length(data: bytes, at: int, longest: int) -> int | None:
    if at >= len(data) or data[at] == 0:
        return None
    length = 8 - data[at].bit_length() + 1
    return length if length <= longest and at + length <= len(data) else None


def _cover_art(file: BinaryIO, start: int, end: int, path: tuple[bytes, ...]) -> int:
    """Bytes in the ``covr`` boxes below the boxes between ``start`` and ``end``, which sit at ``path`` in the file."""
    total, position, looked_at = 0, start, 0
    while position + 8 <= end and looked_at < MAX_ELEMENTS:
        file.seek(position)
        head = file.read(16)
        size, kind = int.from_bytes(head[:4], "big"), head[4:8]
        header = 16 if size == 1 else 8
        size = int.from_bytes(head[8:16], "big") if size == 1 else end - position if size == 0 else size
        if size < header:
            break
        inside = (*path, kind)
        if inside in COVER_PATHS:
            total += min(size, end - position) - header
        elif any(inside == cover[: len(inside)] for cover in COVER_PATHS):
            data = position + header
            if kind == b"meta" and _is_full_box(file, data):
                data += 4
            total += _cover_art(file, data, min(position + size, end), inside)
        position, looked_at = position + size, looked_at + 1
    return total


def _is_full_box(file: BinaryIO, data: int) -> bool:
    """Whether a ``meta`` box starts with version and flags (MP4) rather than with its first child (QuickTime)."""
    file.seek(data)
    return file.read(4) == bytes(4)
