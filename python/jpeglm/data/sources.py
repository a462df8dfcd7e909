"""Where images and clips come from: the listing (and skipping) shared by ``prepare`` and the
commands that take image files and folders on the command line, and the reading of each source.

:func:`scan_sources` lists a folder (recursively), a ``.txt`` list file or a tar archive as
:class:`Source` items, reporting what it could not list (names that are not UTF-8, the
unreadable rest of a truncated archive); :func:`list_images` is the same policy for
command-line arguments (encode, eval, train-tokenizer).

:func:`load_image` decodes one image with Pillow (libjpeg-turbo) and prepares it (center crop +
resize); :func:`load_images` is the same reading and skipping for the commands that take image
files and folders on the command line, :func:`clip_stream` / :func:`load_clips` make the
canonical H.264 stream (:mod:`jpeglm.video.codec`) of clip sources with the settings of
:func:`video_settings`.

``sources.txt`` (:data:`SOURCES`, written by ``prepare``): the source names in shard order, one
JSON string per line after a ``#`` header line (a name holding a newline stays one line);
:func:`read_sources` reads it, and the plain one-name-per-line files of older versions.
"""

from __future__ import annotations

import contextlib
import io
import os
import tarfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from jpeglm import codec
from jpeglm._io import show

__all__ = [
    "IMAGE_SUFFIXES",
    "VIDEO_SUFFIXES",
    "TAR_SUFFIXES",
    "Source",
    "list_sources",
    "scan_sources",
    "list_images",
    "load_image",
    "load_images",
    "clip_stream",
    "video_settings",
    "load_clips",
    "SOURCES",
    "SOURCES_HEADER",
    "read_sources",
]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm"}
#: video sources (``prepare(..., video=...)``): files PyAV decodes, or ``.npy`` frame arrays
#: ``(T, H, W[, 3])`` uint8 taken as already at the clip rate
VIDEO_SUFFIXES = {".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".npy"}
TAR_SUFFIXES = {".tar", ".tgz", ".gz", ".tbz", ".tbz2", ".bz2", ".txz", ".xz"}


@dataclass(frozen=True)
class Source:
    """One image to read: a file path, a member of a tar archive, or bytes already read (a
    parquet row: ``data``), with the label its source gives, if any (a webdataset ``.cls``
    member, a parquet ``label`` column, a ``.jsonl`` list's ``label``)."""

    name: str  # how it is reported
    path: str
    member: str | None = None
    # where the member's data starts and how long it is (read without rescanning the archive)
    info: tarfile.TarInfo | None = field(default=None, compare=False, repr=False)
    data: bytes | None = field(default=None, compare=False, repr=False)
    label: str | None = None

    def read(self) -> bytes:
        """The source's bytes: ``data`` when set, else the file or the archive member."""
        if self.data is not None:
            return self.data
        if self.member is None:
            with open(self.path, "rb") as f:
                return f.read()
        with tarfile.open(self.path) as tf:
            f = tf.extractfile(self.info if self.info is not None else self.member)
            if f is None:
                raise ValueError("not a regular file in the archive")
            return f.read()


def list_sources(src: str | os.PathLike) -> list[Source]:
    """The images of a folder (recursively, sorted), a ``.txt`` list file, or a tar archive."""
    return scan_sources(src)[0]


def scan_sources(
    src: str | os.PathLike, suffixes: set[str] | None = None
) -> tuple[list[Source], list[dict]]:
    """:func:`list_sources` and the problems met listing them, as ``{"source", "error"}``
    entries for ``report.json``: names that are not valid UTF-8 (shown with ``\\xNN``
    escapes; they could not be listed in ``sources.txt``), and a tar archive that is truncated
    or corrupt part way (the members before the damage are listed)."""
    p = Path(src)
    if not p.exists():
        raise FileNotFoundError(f"no such folder, list or archive: {show(p)}")
    problems: list[dict] = []
    if p.is_dir():
        out = [Source(str(f.relative_to(p)), str(f)) for f in _folder_images(p, suffixes)]
    elif p.suffix == ".txt":
        text = p.read_bytes().decode("utf-8", "surrogateescape")
        lines = [ln.strip() for ln in text.splitlines()]
        out = [
            Source(ln, str((p.parent / ln) if not os.path.isabs(ln) else ln)) for ln in lines if ln
        ]
    elif tarfile.is_tarfile(p):
        out = _tar_sources(p, problems, suffixes)
    elif p.suffix.lower() in TAR_SUFFIXES:
        raise ValueError(f"{show(p)}: not a readable tar archive (truncated or corrupt?)")
    else:
        raise ValueError(f"{show(p)}: expected a folder, a .txt list of paths, or a tar archive")
    good = []
    for s in out:
        try:
            s.name.encode("utf-8")
        except UnicodeEncodeError:
            problems.append({"source": show(s.name), "error": "file name is not valid UTF-8"})
        else:
            good.append(s)
    if not good:
        why = f" ({problems[0]['source']}: {problems[0]['error']})" if problems else ""
        raise ValueError(f"no images found in {show(p)}{why}")
    return good, problems


def _folder_images(folder: Path, suffixes: set[str] | None = None) -> list[Path]:
    """The image files (by suffix, any case) under ``folder``, recursively, sorted."""
    suffixes = IMAGE_SUFFIXES if suffixes is None else suffixes
    return sorted(f for f in folder.rglob("*") if f.suffix.lower() in suffixes and f.is_file())


def list_images(items: Sequence[str | os.PathLike]) -> tuple[list[Path], list[dict]]:
    """The image files named by command-line arguments, and the problems met listing them.

    The policy shared by the commands that take images (encode, eval, train-tokenizer, ...):

    - a folder gives every file under it, recursively, whose suffix (any case) is one of
      :data:`IMAGE_SUFFIXES`, sorted by path; its other files are ignored silently, and a
      folder without any image file is a problem;
    - a file gives itself when its suffix is one of :data:`IMAGE_SUFFIXES`, else it is a
      problem (not read: whether it decodes is :func:`load_images`' business);
    - a path that does not exist (or is neither a file nor a folder) is a problem;
    - the arguments keep their order; a file met a second time (named twice, or inside two
      folders given) is kept the first time only.

    The problems are ``{"source", "error"}`` records, as in ``report.json`` (the path shown
    with :func:`~jpeglm._io.show`); the caller decides whether they are fatal. No image at all
    is not an error here either: the list is empty.
    """
    paths: list[Path] = []
    problems: list[dict] = []
    seen: set[Path] = set()

    def add(f: Path) -> None:
        key = Path(os.path.abspath(f))
        if key not in seen:
            seen.add(key)
            paths.append(f)

    for item in items:
        p = Path(item)
        if p.is_dir():
            found = _folder_images(p)
            if not found:
                problems.append({"source": show(p), "error": "no image files in this folder"})
            for f in found:
                add(f)
        elif p.is_file():
            if p.suffix.lower() in IMAGE_SUFFIXES:
                add(p)
            else:
                why = f"not an image file name (expected {', '.join(sorted(IMAGE_SUFFIXES))})"
                problems.append({"source": show(p), "error": why})
        elif p.exists():
            problems.append({"source": show(p), "error": "not a regular file or a folder"})
        else:
            problems.append({"source": show(p), "error": "no such file or folder"})
    return paths, problems


def _tar_sources(p: Path, problems: list[dict], suffixes: set[str] | None = None) -> list[Source]:
    """The image members of a tar archive, up to the first damage (reported in ``problems``)."""
    suffixes = IMAGE_SUFFIXES if suffixes is None else suffixes
    keep = lambda m: Path(m.name).suffix.lower() in suffixes  # noqa: E731
    members = tar_members(p, problems, keep, p.name, "image members")[0]
    members.sort(key=lambda m: m.name)
    return [Source(f"{p.name}:{m.name}", str(p), m.name, m) for m in members]


#: a member :func:`tar_members` reads on its way (a ``.cls`` label) is read up to this size
SMALL_MEMBER = 1 << 16


def tar_members(
    p: Path,
    problems: list[dict],
    keep: Callable[[tarfile.TarInfo], bool],
    name: str,
    what: str,
    small: Callable[[tarfile.TarInfo], bool] | None = None,
) -> tuple[list[tarfile.TarInfo], dict[str, bytes]]:
    """The headers of the regular-file members of tar archive ``p`` that ``keep`` accepts, in
    archive order, up to the first damage (reported in ``problems`` as ``name``'s, counting the
    members kept as ``what``), and the data of those ``small`` accepts (read on the way, in
    one pass, up to :data:`SMALL_MEMBER` bytes each). An archive whose very first header cannot
    be read is a ValueError naming it."""
    members: list[tarfile.TarInfo] = []
    data: dict[str, bytes] = {}
    try:
        with tarfile.open(p) as tf:
            for m in tf:
                if not m.isfile():
                    continue
                if keep(m):
                    members.append(m)
                if small is not None and small(m):
                    f = tf.extractfile(m)
                    data[m.name] = f.read(SMALL_MEMBER) if f is not None else b""
            # tarfile ends quietly at a cut header: what follows the last member must be the
            # zero blocks that end an archive, else the rest of it is lost
            tf.fileobj.seek(tf.offset)
            while block := tf.fileobj.read(1 << 20):
                if block.count(0) != len(block):
                    raise tarfile.ReadError("a member header is cut or corrupt")
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        if not members:
            raise ValueError(f"{show(p)}: cannot read the archive ({type(e).__name__}: {e})") from e
        problems.append({
            "source": show(name),
            "error": f"{type(e).__name__}: archive truncated or corrupt after "
                     f"{len(members)} {what} ({e}); the rest is not read",
        })  # fmt: skip
    return members, data


def load_image(
    data: bytes, size: int, fast: bool = False, exif_transpose: bool = False
) -> np.ndarray:
    """Decode + prepare one image. ``fast``: libjpeg DCT scaling for big JPEGs first;
    ``exif_transpose``: as :func:`jpeglm.codec.prepare`'s."""
    im = Image.open(io.BytesIO(data))
    if fast and im.format == "JPEG":
        # The largest 1/2^k reduction that keeps the short side >= size.
        w, h = im.size
        im.draft("RGB", (max(size, w * size // min(w, h)), max(size, h * size // min(w, h))))
    im.load()
    return codec.prepare(im, size, exif_transpose=exif_transpose)


def _read_image(read, size: int, fast: bool, exif_transpose: bool = False) -> np.ndarray | str:
    """``load_image(read(), size, fast, exif_transpose)``, or the reason it failed as one line:
    any unreadable image is skipped (and reported) by its callers rather than stopping them."""
    try:
        return load_image(read(), size, fast, exif_transpose)
    except UnidentifiedImageError:
        return "UnidentifiedImageError: not an image file Pillow can read"
    except Exception as e:  # noqa: BLE001 - any unreadable image is skipped
        return f"{type(e).__name__}: {e}"


def clip_stream(data: bytes, name: str, video: dict) -> bytes:
    """The canonical H.264 stream (:mod:`jpeglm.video.codec`) of one clip source: ``data`` is a
    video file's bytes or an ``.npy`` of ``(T, H, W[, 3])`` uint8 frames (``name`` tells),
    ``video`` the settings ``prepare --video`` records (fps, seconds, width, height, qp)."""
    from jpeglm.video import codec as vid

    kw = {k: video[k] for k in ("fps", "seconds", "width", "height")}
    if name.lower().endswith(".npy"):
        frames = np.load(io.BytesIO(data), allow_pickle=False)
        if frames.dtype != np.uint8 or frames.ndim not in (3, 4):
            raise ValueError(f"expected (T, H, W[, 3]) uint8 frames, got {frames.dtype} "
                             f"{frames.shape}")  # fmt: skip
        clip = vid.prepare(list(frames), **kw)
    else:
        clip = vid.prepare(data, **kw)
    return vid.encode(clip, qp=video["qp"], fps=int(video["fps"]))


def _read_clip(read, name: str, video: dict) -> bytes | str:
    """:func:`clip_stream` of one source, or why not."""
    try:
        return clip_stream(read(), name, video)
    except Exception as e:  # noqa: BLE001 - any unreadable clip is skipped
        return f"{type(e).__name__}: {e}"


def video_settings(video: dict) -> dict:
    """Clip settings for :func:`clip_stream` (``width``, ``height``, ``fps``, ``seconds``,
    ``qp``): the given ones over the paper's defaults (:mod:`jpeglm.video.codec`); an unknown
    key is a ValueError."""
    from jpeglm.video import codec as vid

    unknown = set(video) - {"width", "height", "fps", "seconds", "qp"}
    if unknown:
        raise ValueError(f"video: unknown setting(s) {', '.join(sorted(unknown))}")
    return {"width": vid.WIDTH, "height": vid.HEIGHT, "fps": vid.FPS, "seconds": vid.SECONDS,
            "qp": vid.QP, **video}  # fmt: skip


def load_clips(
    sources: Sequence[Source], video: dict, workers: int | None = None
) -> tuple[list[Source], list[bytes], list[dict]]:
    """The canonical H.264 streams (:func:`clip_stream`, settings :func:`video_settings`) of
    clip sources, skipping the unreadable ones as ``prepare --video`` does: returns the sources
    read, their streams, and a ``{"source", "error"}`` record for each skipped one."""
    video = video_settings(video)
    with _pool(workers or os.cpu_count() or 1) as pool:
        results = list(pool.map(lambda s: _read_clip(s.read, s.name, video), sources))
    kept, streams, skipped = [], [], []
    for s, r in zip(sources, results):
        if isinstance(r, str):
            skipped.append({"source": show(s.name), "error": r})
        else:
            kept.append(s)
            streams.append(r)
    return kept, streams, skipped


def load_images(
    paths: Sequence[str | os.PathLike],
    size: int = 256,
    fast: bool = False,
    workers: int | None = None,
) -> tuple[list[Path], np.ndarray, list[dict]]:
    """Read and prepare image files, skipping the unreadable ones as ``prepare`` does.

    Returns the paths read, their prepared images as one ``(n, size, size, 3)`` uint8 array
    (what :func:`jpeglm.codec.encode_batch` takes) and a ``{"source", "error"}`` record for
    each file that could not be read or decoded (missing, not an image, truncated, ...), in
    the order of ``paths``. Reads on ``workers`` threads (None: all cores).
    """
    size = codec.check_size(size)
    paths = [Path(p) for p in paths]
    with _pool(workers or os.cpu_count() or 1) as pool:
        results = list(pool.map(lambda p: _read_image(p.read_bytes, size, fast), paths))
    kept, images, skipped = [], [], []
    for p, r in zip(paths, results):
        if isinstance(r, str):
            skipped.append({"source": show(p), "error": r})
        else:
            kept.append(p)
            images.append(r)
    stack = np.stack(images) if images else np.empty((0, size, size, 3), np.uint8)
    return kept, stack, skipped


@contextlib.contextmanager
def _pool(workers: int) -> Iterator[ThreadPoolExecutor]:
    """A thread pool that, on an exception (Ctrl-C), drops its queued work instead of
    finishing it: only the images being read at that moment are completed."""
    pool = ThreadPoolExecutor(workers)
    try:
        yield pool
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()


SOURCES = "sources.txt"
#: the first line of ``sources.txt``: each line after it is one source name as a JSON string
SOURCES_HEADER = "# jpeglm sources: one JSON string per line, in the order of the shards"


def read_sources(folder: str | os.PathLike) -> list[str]:
    """The source names of a prepared folder, in order, from its ``sources.txt``: one JSON
    string per line after :data:`SOURCES_HEADER`, or, in a file of an older jpeglm (no header),
    one name per line as written (a name holding a newline was ambiguous there)."""
    from jpeglm._io import parse_json

    p = Path(folder) / SOURCES
    lines = p.read_text(encoding="utf-8", errors="surrogateescape").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines or lines[0] != SOURCES_HEADER:
        return lines
    names = []
    for i, line in enumerate(lines[1:], 2):
        name = parse_json(line, f"{show(p)} line {i}")
        if not isinstance(name, str):
            raise ValueError(f"{show(p)} line {i} is not a JSON string")
        names.append(name)
    return names
