"""The H.264 bitstream, read just enough for AVC-LM's canonical clips.

The bitstream helpers (:func:`nal_units`, :func:`structure`) read just enough H.264 syntax
(NAL headers, the SPS's size, each slice's first macroblock and type, x264's settings SEI) to
check a stream's shape and cut it at frame boundaries; pixels are always decoded by libavcodec
(:mod:`jpeglm.video.codec`). Pure Python: no PyAV needed here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

__all__ = ["MAX_STREAM_BYTES", "Nal", "VideoError", "nal_units", "structure"]

MAX_STREAM_BYTES = 64 << 20  #: a larger input is refused (a clip is ~50 kB)


class VideoError(ValueError):
    """A stream or clip that cannot be encoded or (strictly) decoded."""


@dataclass
class Nal:
    """One NAL unit: its byte span in the stream (start code included) and header fields."""

    start: int  #: offset of its start code
    end: int  #: offset after its last byte
    type: int  #: nal_unit_type (1 slice, 5 IDR slice, 6 SEI, 7 SPS, 8 PPS, ...)
    payload: bytes  #: the bytes after the NAL header, emulation prevention removed
    first_mb: int | None = None  #: first_mb_in_slice (slices only)
    slice_type: int | None = None  #: 0/5 P, 1/6 B, 2/7 I, ... (slices only)


_START = re.compile(b"\x00\x00\x01")


def _unescape(raw: bytes) -> bytes:
    return raw.replace(b"\x00\x00\x03", b"\x00\x00")


class _Bits:
    """An MSB-first bit reader over ``data`` held as one integer (Exp-Golomb codes are read
    with ``int.bit_length`` instead of bit by bit)."""

    def __init__(self, data: bytes) -> None:
        self.value, self.left = int.from_bytes(data, "big"), 8 * len(data)

    def bits(self, n: int) -> int:
        if n > self.left:
            raise VideoError("truncated syntax element")
        self.left -= n
        return (self.value >> self.left) & ((1 << n) - 1)

    def bit(self) -> int:
        return self.bits(1)

    def ue(self) -> int:
        rest = self.value & ((1 << self.left) - 1)
        zeros = self.left - rest.bit_length()  # leading zero bits before the marker 1
        if rest == 0 or zeros > 31:
            raise VideoError("truncated syntax element" if rest == 0 else "bad Exp-Golomb code")
        self.left -= zeros
        return self.bits(zeros + 1) - 1


def nal_units(data: bytes) -> list[Nal]:
    """The NAL units of an Annex-B stream (3- or 4-byte start codes); slices get their first
    macroblock and type. A unit whose header cannot be read is typed ``-1``."""
    data = bytes(data)
    if len(data) > MAX_STREAM_BYTES:
        raise VideoError(f"stream of {len(data)} bytes is over the {MAX_STREAM_BYTES} limit")
    starts = [m.start() for m in _START.finditer(data)]
    units = []
    for i, s in enumerate(starts):
        begin = s - 1 if s > 0 and data[s - 1] == 0 else s  # a 4-byte start code
        body_start = s + 3
        end = starts[i + 1] if i + 1 < len(starts) else len(data)
        if i + 1 < len(starts) and data[end - 1] == 0:
            end -= 1  # the next 4-byte start code's leading zero
        body = data[body_start:end]
        if not body or body[0] & 0x80:
            units.append(Nal(begin, end, -1, b""))
            continue
        nal = Nal(begin, end, body[0] & 0x1F, _unescape(body[1:]))
        if nal.type in (1, 5):
            try:
                r = _Bits(nal.payload[:16])  # two ue(v) of at most 63 bits each
                nal.first_mb, nal.slice_type = r.ue(), r.ue()
            except VideoError:
                nal.type = -1
        units.append(nal)
    return units


def _sps_size(sps: bytes) -> tuple[int, int]:
    """(width, height) in macroblocks from a baseline/main SPS payload."""
    r = _Bits(sps)
    profile = r.bits(8)
    r.bits(16)  # constraint flags + level
    r.ue()  # seq_parameter_set_id
    if profile in (100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135):
        raise VideoError(f"profile {profile} is not the canonical baseline")
    r.ue()  # log2_max_frame_num_minus4
    poc_type = r.ue()
    if poc_type == 0:
        r.ue()
    elif poc_type == 1:
        r.bit()
        r.ue()
        r.ue()
        for _ in range(min(r.ue(), 255)):
            r.ue()
    r.ue()  # max_num_ref_frames
    r.bit()  # gaps_in_frame_num_value_allowed_flag
    w = r.ue() + 1
    h = r.ue() + 1
    frame_mbs_only = r.bit()
    return w, h * (2 - frame_mbs_only)


def structure(data: bytes) -> dict[str, Any]:
    """What a stream is made of: profile, size in macroblocks, frames and slices per frame,
    slice types, and x264's own record of its settings (the SEI it writes), parsed to a dict."""
    units = nal_units(data)
    sps = [u for u in units if u.type == 7]
    out: dict[str, Any] = {"annexb": data[:4] == b"\x00\x00\x00\x01" or data[:3] == b"\x00\x00\x01"}
    if sps:
        out["profile_idc"] = sps[0].payload[0] if sps[0].payload else None
        out["mb_width"], out["mb_height"] = _sps_size(sps[0].payload)
    frames = _frames(units)
    out["frames"] = len(frames)
    out["slices_per_frame"] = [len(f) for f in frames]
    out["slice_types"] = sorted({u.slice_type % 5 for f in frames for u in f})
    out["x264"] = {}
    for u in units:
        if u.type == 6 and b"x264" in u.payload:
            text = u.payload.split(b"\x00")[0].decode("latin-1")
            core = re.search(r"core (\d+)", text)
            out["x264_core"] = int(core.group(1)) if core else None
            opts = text.split("options: ", 1)[-1]
            out["x264"] = dict(kv.split("=", 1) for kv in opts.split() if "=" in kv)
    return out


def _frames(units: list[Nal]) -> list[list[Nal]]:
    """Slices grouped into pictures: a slice with first_mb_in_slice == 0 starts a picture."""
    frames: list[list[Nal]] = []
    for u in units:
        if u.type in (1, 5):
            if u.first_mb == 0 or not frames:
                frames.append([])
            frames[-1].append(u)
    return frames


def _complete_frames(
    data: bytes, units: list[Nal] | None = None
) -> tuple[list[Nal], list[list[Nal]], int]:
    """(parameter sets and SEI before the first slice, the complete pictures in order, the
    number of macroblocks a picture has). A picture is complete when its slices cover
    macroblocks 0..N-1 in order with no unreadable unit among them; the first picture that is
    not ends the list (everything after depends on it). ``units``: :func:`nal_units` of
    ``data`` when the caller has them."""
    units = nal_units(data) if units is None else units
    sps = [u for u in units if u.type == 7]
    if not sps:
        return [], [], 0
    try:
        mw, mh = _sps_size(sps[0].payload)
    except VideoError:
        return [], [], 0
    n_mb = mw * mh
    first_slice = next((i for i, u in enumerate(units) if u.type in (1, 5)), len(units))
    header = [u for u in units[:first_slice] if u.type in (6, 7, 8)]
    complete: list[list[Nal]] = []
    current: list[Nal] = []
    for u in units[first_slice:]:
        if u.type == -1:
            break
        if u.type not in (1, 5):
            continue
        if u.first_mb == 0:
            current = [u]
        elif current and u.first_mb == current[-1].first_mb + 1:
            current.append(u)
        else:
            break  # a slice out of order: the picture is damaged
        if len(current) == n_mb:
            # with one macroblock per slice a picture is complete at its last macroblock;
            # a truncated last slice is caught by the decoder
            complete.append(current)
            current = []
    return header, complete, n_mb
