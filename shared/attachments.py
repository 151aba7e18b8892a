"""How many bytes of attachments a Matroska file holds, from element headers alone.

FFmpeg's Matroska demuxer reads every attachment into memory while it opens the file (and copies it
more than once), whether or not anyone wants it: a 120 MB font costs 861 MB. Attachments sit in one
``Attachments`` element of the segment, found by walking the segment's top-level elements up to the
first cluster and by following its ``SeekHead`` entries, as the demuxer does. Only element headers
and seek entries are read here, a few bytes each.
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


def attachment_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes in the attachments of the Matroska (or WebM) file at ``path``; 0 for any other file.

    An ``Attachments`` element of unknown size counts as reaching the end of the file.
    """
    with open(path, "rb") as file:
        if file.read(4) != EBML_MAGIC:
            return 0
        end = file.seek(0, os.SEEK_END)
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
