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
* **decode** -- strict (any damage raises :class:`~jpeglm.video.h264.VideoError`), or
  tolerant of truncated and corrupt generations: the stream is split into frames at the slice
  level, only frames whose every macroblock's slice arrived in order are decoded, and a frame
  that is missing or cannot be decoded repeats the last good one (grey before any), with
  ``valid_frames`` counted -- the video twin of the image codec's ``valid_mcus``:
  :func:`decode`.
* **prompts** -- :func:`prompt_stream` cuts a stream after the k-th frame's last slice (the
  paper prompts with 10 frames and generates 5).

The H.264 syntax a stream is checked and cut with is read by :mod:`jpeglm.video.h264`; clips
are sampled from a model by :mod:`jpeglm.video.sample`. PyAV is an optional dependency
(``pip install 'jpeglm[video]'``; its wheels bundle libx264, which is GPL).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jpeglm.video.h264 import (
    MAX_STREAM_BYTES,
    Nal,
    VideoError,
    _complete_frames,
    _frames,
    nal_units,
)

__all__ = [
    "FPS",
    "FRAMES",
    "HEIGHT",
    "QP",
    "WIDTH",
    "X264_OPTIONS",
    "VideoResult",
    "check_frame_size",
    "decode",
    "encode",
    "frame_count",
    "prepare",
    "prompt_stream",
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

MAX_FRAMES = 4096


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
