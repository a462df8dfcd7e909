"""AVC-LM's canonical video bytes: H.264 clips as the JPEG-LM paper makes them (Appendix D).

The paper's recipe, reproduced with PyAV (whose wheels ship libx264; no system ffmpeg needed):

* **clip** -- 3 frames per second, the first 5 seconds (15 frames), each frame scaled to fit
  256x144 and padded to it, centred (ffmpeg's ``scale=256:144:force_original_aspect_ratio=
  decrease,pad=256:144:(ow-iw)/2:(oh-ih)/2``): :func:`prepare`.
* **codec** -- ``libx264 -pix_fmt yuv420p -profile:v baseline -qp 37 -bf 0 -x264opts
  slice-max-mbs=1 -trellis 0 -me_method dia -threads 1 -subq 0 -psy 0 -mixed-refs 0
  -fast-pskip 0 -partitions none -refs 3``, written as a raw Annex-B stream (start codes, SPS,
  PPS, x264's settings SEI, one slice NAL per macroblock); no header is stripped: the paper
  lets BPE handle such metadata: :func:`encode`.
* **decode** -- strict (any damage raises :class:`VideoError`), or tolerant of truncated and
  corrupt generations: the stream is split into frames at the slice level, only frames whose
  every macroblock's slice arrived in order are decoded, and a frame that is missing or cannot
  be decoded repeats the last good one (grey before any), with ``valid_frames`` counted -- the
  video twin of the image codec's ``valid_mcus``: :func:`decode`.
* **prompts** -- :func:`prompt_stream` cuts a stream after the k-th frame's last slice (the
  paper prompts with 10 frames and generates 5).

The bitstream helpers (:func:`nal_units`, :func:`structure`) read just enough H.264 syntax
(NAL headers, the SPS's size, each slice's first macroblock and type, x264's settings SEI) to
check a stream's shape and cut it at frame boundaries; pixels are always decoded by libavcodec.
PyAV is an optional dependency (``pip install 'jpeglm[video]'``; its wheels bundle libx264,
which is GPL).
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "FPS",
    "FRAMES",
    "HEIGHT",
    "QP",
    "WIDTH",
    "X264_OPTIONS",
    "ClipSample",
    "VideoError",
    "VideoResult",
    "check_frame_size",
    "complete",
    "decode",
    "encode",
    "frame_count",
    "generate",
    "nal_units",
    "prepare",
    "prompt_stream",
    "structure",
]

FPS = 3  #: frames per second of a canonical clip
SECONDS = 5  #: the first seconds of the source kept
FRAMES = FPS * SECONDS  #: frames of a canonical clip (15)
WIDTH, HEIGHT = 256, 144  #: the canonical frame size
QP = 37  #: constant quantiser

#: libx264 options of the paper's command, as ffmpeg (and PyAV's codec options) spell them
X264_OPTIONS: dict[str, str] = {
    "profile": "baseline",
    "bf": "0",
    "x264opts": "slice-max-mbs=1",
    "trellis": "0",
    "me_method": "dia",
    "threads": "1",
    "subq": "0",
    "psy": "0",
    "mixed-refs": "0",
    "fast-pskip": "0",
    "partitions": "none",
    "refs": "3",
}

MAX_STREAM_BYTES = 64 << 20  #: a larger input is refused (a clip is ~50 kB)
MAX_FRAMES = 4096


class VideoError(ValueError):
    """A stream or clip that cannot be encoded or (strictly) decoded."""


def _av():
    try:
        import av
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "video needs PyAV (its wheels ship libx264): pip install 'jpeglm[video]'"
        ) from e
    import av.logging

    av.logging.set_level(av.logging.PANIC)  # errors come back as exceptions, not stderr noise
    return av


# ------------------------------------------------------------------------------- preparation


def _fit_and_pad(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    """Scale to fit ``width`` x ``height`` keeping the aspect ratio (never up past either
    side), then pad with black, centred: ffmpeg's scale=W:H:force_original_aspect_ratio=
    decrease + pad=W:H:(ow-iw)/2:(oh-ih)/2 (bicubic, as ffmpeg's default scaler)."""
    from PIL import Image

    h, w = frame.shape[:2]
    scale = min(width / w, height / h)
    nw = max(2, min(width, int(round(w * scale)) // 2 * 2))
    nh = max(2, min(height, int(round(h * scale)) // 2 * 2))
    im = Image.fromarray(frame)
    if (nw, nh) != (w, h):
        im = im.resize((nw, nh), Image.BICUBIC)
    out = np.zeros((height, width, 3), np.uint8)
    top, left = (height - nh) // 2, (width - nw) // 2
    out[top : top + nh, left : left + nw] = np.asarray(im.convert("RGB"))
    return out


def check_frame_size(width: int, height: int) -> None:
    """A canonical frame size: both sides even (4:2:0) and in 2..4096; else ValueError."""
    if width % 2 or height % 2 or width <= 0 or height <= 0 or width > 4096 or height > 4096:
        raise ValueError(f"width and height must be even and in 2..4096, got {width}x{height}")


def prepare(
    source: str | os.PathLike | bytes | np.ndarray | list,
    *,
    fps: float = FPS,
    seconds: float = SECONDS,
    width: int = WIDTH,
    height: int = HEIGHT,
    source_fps: float | None = None,
) -> np.ndarray:
    """A canonical clip ``(T, height, width, 3)`` uint8 from a video file or from frames.

    A file (a path, or its bytes) is decoded with PyAV and resampled to ``fps`` (frame ``k``
    is the last source frame shown at time ``k / fps``, as ffmpeg's fps filter picks), the
    first ``seconds`` kept.
    Frames (an array ``(T, H, W, 3)`` / ``(T, H, W)`` uint8 or a list of such images) are taken
    as already at ``fps`` unless ``source_fps`` says otherwise. Each frame is scaled to fit
    and padded to ``width`` x ``height`` (both even).
    """
    check_frame_size(width, height)
    if not (fps > 0 and seconds > 0):
        raise ValueError("fps and seconds must be positive")
    n_out = int(round(fps * seconds))
    if isinstance(source, (str, os.PathLike, bytes, bytearray, memoryview)):
        times, frames = _read_file(source, seconds)
    else:
        frames = [np.asarray(f) for f in source]
        rate = source_fps or fps
        times = [i / rate for i in range(len(frames))]
    if not frames:
        raise VideoError("no frames")
    # frame k shows at k / fps: the last source frame shown by then, while the source lasts
    end = times[-1] + (times[-1] - times[-2] if len(times) > 1 else 1.0 / fps)
    picked, j = [], 0
    for k in range(n_out):
        t = k / fps
        if t >= end - 1e-9:
            break
        while j + 1 < len(times) and times[j + 1] <= t + 1e-9:
            j += 1
        picked.append(frames[j])
    out = []
    for f in picked:
        if f.dtype != np.uint8:
            raise TypeError(f"frames must be uint8, got {f.dtype}")
        if f.ndim == 2:
            f = np.repeat(f[:, :, None], 3, axis=2)
        if f.ndim != 3 or f.shape[2] not in (3, 4) or 0 in f.shape:
            raise ValueError(f"a frame must be (H, W, 3), got {f.shape}")
        out.append(_fit_and_pad(np.ascontiguousarray(f[:, :, :3]), width, height))
    return np.stack(out)


def _read_file(source, seconds: float) -> tuple[list[float], list[np.ndarray]]:
    """Decoded frames and their times of a video file (a path, or its bytes)."""
    av = _av()
    if isinstance(source, (bytes, bytearray, memoryview)):
        path, target = "<video bytes>", io.BytesIO(bytes(source))
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"no such video file: {path}")
        target = str(path)
    try:
        with av.open(target) as container:
            stream = container.streams.video[0]
            times, frames = [], []
            for frame in container.decode(stream):
                t = float(frame.time) if frame.time is not None else len(frames) / 25.0
                if frames and t > seconds + 1.0:
                    break
                times.append(t)
                frames.append(frame.to_ndarray(format="rgb24"))
    except (av.FFmpegError, IndexError) as e:
        raise VideoError(f"{path}: cannot decode as video: {e}") from e
    if not frames:
        raise VideoError(f"{path}: no video frames")
    t0 = times[0]
    return [t - t0 for t in times], frames


# ---------------------------------------------------------------------------------- encoding


def encode(clip: np.ndarray, *, qp: int = QP, fps: int = FPS) -> bytes:
    """The canonical Annex-B H.264 stream of ``clip`` ``(T, H, W, 3)`` uint8 (H, W even): the
    paper's libx264 settings, one macroblock per slice, no B-frames, constant ``qp``."""
    av = _av()
    clip = np.asarray(clip)
    if clip.dtype != np.uint8:
        raise TypeError(f"clip must be uint8, got {clip.dtype}")
    if clip.ndim != 4 or clip.shape[3] != 3 or clip.shape[0] == 0:
        raise ValueError(f"clip must be (T, H, W, 3), got {clip.shape}")
    t, h, w, _ = clip.shape
    if h % 2 or w % 2 or h > 4096 or w > 4096 or t > MAX_FRAMES:
        raise ValueError(f"frames must have even sides up to 4096 (and T <= {MAX_FRAMES})")
    if not 0 <= qp <= 51:
        raise ValueError(f"qp must be in 0..51, got {qp}")
    buf = io.BytesIO()
    out = av.open(buf, mode="w", format="h264")
    try:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.codec_context.options = {**X264_OPTIONS, "qp": str(qp)}
        for frame in clip:
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            for packet in stream.encode(vf):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    finally:
        out.close()
    return buf.getvalue()


# ----------------------------------------------------------------------- bitstream structure


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


# ---------------------------------------------------------------------------------- decoding


@dataclass
class VideoResult:
    """A tolerant decode: ``frames`` ``(T, H, W, 3)`` uint8, the first ``valid_frames`` of
    them decoded from complete pictures, the rest repeats of the last good frame (grey when
    there is none)."""

    frames: np.ndarray
    valid_frames: int
    total_frames: int

    @property
    def clean(self) -> bool:
        return self.valid_frames == self.total_frames


def _decode_all(data: bytes) -> list[np.ndarray]:
    av = _av()
    frames = []
    with av.open(io.BytesIO(data), format="h264") as container:
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
    return frames


def decode(
    data: bytes,
    *,
    tolerant: bool = False,
    frames: int | None = None,
    size: tuple[int, int] = (HEIGHT, WIDTH),
) -> np.ndarray | VideoResult:
    """Decode an Annex-B H.264 stream to ``(T, H, W, 3)`` uint8.

    Strict (default): any damage -- an unreadable unit, a picture with missing or disordered
    slices, a decoder error -- raises :class:`VideoError`. ``tolerant=True`` returns a
    :class:`VideoResult` of ``frames`` frames (default: as many as the stream has pictures,
    at least one): complete pictures decoded, the rest repeating the last good one.
    """
    av = _av()
    data = bytes(data)
    if len(data) > MAX_STREAM_BYTES:
        raise VideoError(f"stream of {len(data)} bytes is over the {MAX_STREAM_BYTES} limit")
    if not tolerant:
        try:
            units = nal_units(data)
            header, complete, _ = _complete_frames(data, units)
            if not complete or _frames(units) != complete:
                raise VideoError("damaged stream: a picture has missing or disordered slices")
            out = _decode_all(data)
        except av.FFmpegError as e:
            raise VideoError(f"cannot decode: {e}") from e
        if len(out) != len(complete):
            raise VideoError(f"decoded {len(out)} frames from {len(complete)} pictures")
        return np.stack(out)

    units = nal_units(data)
    header, complete, _ = _complete_frames(data, units)
    total = frames if frames is not None else max(1, len(_frames(units)))
    if total <= 0 or total > MAX_FRAMES:
        raise ValueError(f"frames must be in 1..{MAX_FRAMES}, got {total}")
    decoded: list[np.ndarray] = []
    if header and complete:
        keep = complete[:total]
        pieces = [data[u.start : u.end] for u in header]
        pieces += [data[u.start : u.end] for pic in keep for u in pic]
        try:
            decoded = _decode_all(b"".join(pieces))[: len(keep)]
        except av.FFmpegError:
            decoded = _decode_prefix(header, keep, data)
    h, w = decoded[0].shape[:2] if decoded else size
    out = np.empty((total, h, w, 3), np.uint8)
    last = np.full((h, w, 3), 128, np.uint8)
    for i in range(total):
        if i < len(decoded):
            last = decoded[i]
        out[i] = last
    return VideoResult(out, min(len(decoded), total), total)


def _decode_prefix(header: list[Nal], pictures: list[list[Nal]], data: bytes) -> list[np.ndarray]:
    """The longest prefix of ``pictures`` that libavcodec decodes without an error."""
    av = _av()
    lo, hi, best = 0, len(pictures), []
    while lo < hi:  # binary search on the prefix length
        mid = (lo + hi + 1) // 2
        pieces = [data[u.start : u.end] for u in header]
        pieces += [data[u.start : u.end] for pic in pictures[:mid] for u in pic]
        try:
            got = _decode_all(b"".join(pieces))
            if len(got) >= mid:
                best, lo = got[:mid], mid
            else:
                hi = mid - 1
        except av.FFmpegError:
            hi = mid - 1
    return best


def frame_count(data: bytes) -> int:
    """The pictures in a canonical stream."""
    return len(_frames(nal_units(data)))


def prompt_stream(data: bytes, frames: int) -> bytes:
    """The stream cut after the ``frames``-th picture's last slice (parameter sets and SEI
    kept): the prompt from which a model continues the clip."""
    if frames < 0:
        raise ValueError(f"frames must be >= 0, got {frames}")
    units = nal_units(data)
    pics = _frames(units)
    if frames > len(pics):
        raise ValueError(f"the stream has {len(pics)} pictures, fewer than {frames}")
    if frames == 0:
        first = next((u.start for u in units if u.type in (1, 5)), len(data))
        return bytes(data[:first])
    return bytes(data[: pics[frames - 1][-1].end])


# ---------------------------------------------------------------------------------- sampling


@dataclass
class ClipSample:
    """One generated clip: the stream (prompt included), its tolerant decode and counts."""

    tokens: list[int]  #: generated token ids (prompt excluded)
    data: bytes  #: the Annex-B stream, prompt included
    frames: np.ndarray  #: (T, H, W, 3) uint8
    valid_frames: int
    total_frames: int


def complete(
    model,
    tokenizer,
    clips: list,
    *,
    frames: int = 10,
    total_frames: int = FRAMES,
    size: tuple[int, int] = (HEIGHT, WIDTH),
    on_sample: Callable[[int, ClipSample], None] | None = None,
    **sampling: Any,
) -> list[ClipSample]:
    """Continue each clip (a canonical stream, or frames to :func:`encode`) after its first
    ``frames`` frames, as the paper evaluates AVC-LM (10 frames of prompt, 5 generated):
    unconstrained sampling (H.264 has no scan grammar here), decoded tolerantly into
    ``total_frames`` frames. ``sampling``: the keyword options of :func:`generate`;
    ``on_sample`` as there."""
    streams = [c if isinstance(c, (bytes, bytearray)) else encode(np.asarray(c)) for c in clips]
    prompts = [prompt_stream(s, frames) for s in streams]
    return _sample(model, tokenizer, prompts, total_frames, size, sampling, on_sample)


def generate(
    model,
    tokenizer,
    n: int = 1,
    *,
    total_frames: int = FRAMES,
    size: tuple[int, int] = (HEIGHT, WIDTH),
    temperature: float = 1.0,
    top_k: int | None = 50,
    top_p: float | None = 0.9,
    max_tokens: int | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    dtype: str = "fp32",
    on_sample: Callable[[int, ClipSample], None] | None = None,
) -> list[ClipSample]:
    """``n`` unconditional clips (the model writes the parameter sets too). ``on_sample``: each
    clip's index and clip handed to it as its batch finishes, none kept, ``[]`` returned (so a
    caller writes clips as they are made; ``n`` may then be 10**9)."""
    from jpeglm.inference.loop import repeat_prompt

    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p, max_tokens=max_tokens,
                    seed=seed, batch_size=batch_size, dtype=dtype)  # fmt: skip
    return _sample(model, tokenizer, repeat_prompt(b"", n), total_frames, size, sampling,
                   on_sample)  # fmt: skip


def _sample(
    model,
    tokenizer,
    prompts: Sequence[bytes],
    total_frames: int,
    size: tuple[int, int],
    sampling: dict[str, Any],
    on_sample: Callable[[int, ClipSample], None] | None = None,
) -> list[ClipSample]:
    from jpeglm.inference.loop import generate_tokens

    def finish(prompt: bytes, toks: list[int]) -> ClipSample:
        data = bytes(prompt) + tokenizer.decode(toks)
        r = decode(data, tolerant=True, frames=total_frames, size=size)
        return ClipSample(toks, data, r.frames, r.valid_frames, r.total_frames)

    sampling = {"seed": 0, **sampling}
    if on_sample is not None:

        def done(i: int, toks: list[int]) -> None:
            on_sample(i, finish(prompts[i], toks))

        generate_tokens(model, tokenizer, prompts, **sampling, on_result=done)
        return []
    new = generate_tokens(model, tokenizer, prompts, **sampling)
    return [finish(p, toks) for p, toks in zip(prompts, new)]
