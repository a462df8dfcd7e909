"""Where images come from: the listing (and skipping) shared by ``prepare`` and the commands
that take image files and folders on the command line.

:func:`scan_sources` lists a folder (recursively), a ``.txt`` list file or a tar archive as
:class:`Source` items, reporting what it could not list (names that are not UTF-8, the
unreadable rest of a truncated archive); :func:`list_images` is the same policy for
command-line arguments (encode, eval, train-tokenizer). :mod:`jpeglm.data.prepare` re-exports these
names.
"""

from __future__ import annotations

import os
import tarfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from jpeglm._io import show

__all__ = [
    "IMAGE_SUFFIXES",
    "VIDEO_SUFFIXES",
    "TAR_SUFFIXES",
    "Source",
    "list_sources",
    "scan_sources",
    "list_images",
]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm"}
#: video sources (``prepare(..., video=...)``): files PyAV decodes, or ``.npy`` frame arrays
#: ``(T, H, W[, 3])`` uint8 taken as already at the clip rate
VIDEO_SUFFIXES = {".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".npy"}
TAR_SUFFIXES = {".tar", ".tgz", ".gz", ".tbz", ".tbz2", ".bz2", ".txz", ".xz"}


@dataclass(frozen=True)
class Source:
    """One image to read: a file path, or a member of a tar archive."""

    name: str  # how it is reported
    path: str
    member: str | None = None
    # where the member's data starts and how long it is (read without rescanning the archive)
    info: tarfile.TarInfo | None = field(default=None, compare=False, repr=False)

    def read(self) -> bytes:
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
    members = []
    try:
        with tarfile.open(p) as tf:
            for m in tf:
                if m.isfile() and Path(m.name).suffix.lower() in suffixes:
                    members.append(m)
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
            "source": show(p.name),
            "error": f"{type(e).__name__}: archive truncated or corrupt after "
                     f"{len(members)} image members ({e}); the rest is not read",
        })  # fmt: skip
    members.sort(key=lambda m: m.name)
    return [Source(f"{p.name}:{m.name}", str(p), m.name, m) for m in members]
