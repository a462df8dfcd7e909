"""Webdataset tar shards (img2dataset's default output) and the names that address them.

A shard is a tar archive whose members are grouped into samples as webdataset groups them: the
members whose names share the path up to the first ``.`` of the last path component form one
sample, that path being its key (``dir/000000001`` for ``dir/000000001.jpg``, ``.txt``,
``.json``, ``.cls``). :func:`shard_sources` gives a shard's samples that hold an image, sorted
by key; :func:`expand_braces` and :func:`pattern_root` read the brace patterns
(``shards-{00000..02299}.tar``) shards are named by.
"""

from __future__ import annotations

import re
import tarfile
from pathlib import Path

from jpeglm._io import show
from jpeglm.data.sources import IMAGE_SUFFIXES, Source, tar_members

__all__ = ["TAR_NAMES", "is_tar_name", "sample_key", "shard_sources", "expand_braces",
           "pattern_root"]  # fmt: skip

#: how a tar archive's file name ends (any case), when a folder or a list is searched
TAR_NAMES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz", ".tbz2", ".tar.xz", ".txz")
#: which image member a sample's image is when it has several (then by name)
PREFERENCE = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".ppm")
#: the member whose text is a sample's label
LABEL_EXT = "cls"


def is_tar_name(name: str) -> bool:
    """Whether a file name looks like a tar archive's (:data:`TAR_NAMES`)."""
    return name.lower().endswith(TAR_NAMES)


def sample_key(member: str) -> tuple[str, str] | None:
    """A member name's sample key and extension (``("dir/0001", "seg.png")`` for
    ``dir/0001.seg.png``), or None for a name webdataset skips (no ``.`` in its last
    component, or a hidden file)."""
    folder, _, base = member.rpartition("/")
    if "." not in base or base.startswith("."):
        return None
    head, ext = base.split(".", 1)
    return (f"{folder}/{head}" if folder else head), ext


def _rank(member: str, suffixes: set[str]) -> tuple:
    """Sort key of a sample's image members: a plain image extension first (``0001.jpg``
    before ``0001.seg.png``), then by :data:`PREFERENCE`, then by name."""
    suffix = Path(member).suffix.lower()
    ext = sample_key(member)[1].lower()  # type: ignore[index]
    order = PREFERENCE if suffixes is IMAGE_SUFFIXES else tuple(sorted(suffixes))
    pos = order.index(suffix) if suffix in order else len(order)
    return ("." + ext != suffix, pos, member)


def shard_sources(
    path: str | Path,
    name: str,
    problems: list[dict],
    suffixes: set[str] | None = None,
    labels: bool = True,
) -> list[Source]:
    """The samples of webdataset shard ``path`` (reported as ``name``) that hold an image,
    sorted by key: one :class:`Source` each, named ``f"{name}:{image member}"``, its label the
    stripped text of its ``.cls`` member (read only when ``labels``). A sample without an image
    member is skipped silently (a caption-only sample); a member whose name is not UTF-8 is a
    problem (it could not be listed in ``sources.txt``) and its sample is skipped; damage part
    way through keeps the samples before it and is a problem; an archive that cannot be read
    at all is a problem and gives nothing. Only the headers are read (and the labels)."""
    p = Path(path)
    suffixes = IMAGE_SUFFIXES if suffixes is None else suffixes

    def is_image(m: tarfile.TarInfo) -> bool:
        return Path(m.name).suffix.lower() in suffixes and sample_key(m.name) is not None

    def is_label(m: tarfile.TarInfo) -> bool:
        k = sample_key(m.name)
        return labels and k is not None and k[1] == LABEL_EXT

    try:
        members, small = tar_members(p, problems, is_image, name, "image members", is_label)
    except ValueError as e:
        problems.append({"source": show(name), "error": str(e).replace(show(p) + ": ", "")})
        return []
    samples: dict[str, list[tarfile.TarInfo]] = {}
    bad: set[str] = set()
    for m in members:
        key = sample_key(m.name)[0]  # type: ignore[index]
        try:
            m.name.encode("utf-8")
        except UnicodeEncodeError:
            if key not in bad:
                bad.add(key)
                problems.append({"source": show(f"{name}:{m.name}"),
                                 "error": "member name is not valid UTF-8"})  # fmt: skip
            continue
        samples.setdefault(key, []).append(m)
    texts = {sample_key(n)[0]: b for n, b in small.items()}  # type: ignore[index]
    out = []
    for key in sorted(k for k in samples if k not in bad):
        m = min(samples[key], key=lambda m: _rank(m.name, suffixes))
        label = texts.get(key)
        text = label.decode("utf-8", "replace").strip() if label is not None else None
        out.append(Source(f"{name}:{m.name}", str(p), m.name, m, label=text))
    return out


_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"(-?\d+)\.\.(-?\d+)(?:\.\.(-?\d+))?")


def _alternatives(body: str) -> list[str] | None:
    """What one brace group stands for: a numeric range ``a..b[..step]`` (zero padding kept
    when an end has it), a list ``a,b,c``; None for a group that is neither (kept as is)."""
    m = _RANGE.fullmatch(body)
    if m:
        a, b, step = int(m[1]), int(m[2]), abs(int(m[3] or 1))
        if step == 0:
            raise ValueError(f"{{{body}}}: a range step must not be 0")
        pad = any(len(e.lstrip("-")) > 1 and e.lstrip("-")[0] == "0" for e in m.groups()[:2])
        width = max(len(m[1]), len(m[2])) if pad else 0
        nums = range(a, b + 1, step) if a <= b else range(a, b - 1, -step)
        return [f"{n:0{width}d}" for n in nums]
    if "," in body:
        return body.split(",")
    return None


def expand_braces(pattern: str) -> list[str]:
    """The names a brace pattern stands for, in order, as a shell expands it:
    ``shards-{00000..00002}.tar`` -> ``shards-00000.tar``, ``-00001``, ``-00002``;
    ``{train,val}/{0..1}.tar`` -> four names. Braces do not nest; a group that is neither a
    range nor a list stays as written."""
    for m in _BRACE.finditer(pattern):
        alts = _alternatives(m[1])
        if alts is not None:
            head, tails = pattern[: m.start()], expand_braces(pattern[m.end() :])
            return [head + a + t for a in alts for t in tails]
    return [pattern]


def has_braces(pattern: str) -> bool:
    """Whether ``pattern`` holds a brace group that :func:`expand_braces` expands."""
    return any(_alternatives(m[1]) is not None for m in _BRACE.finditer(pattern))


def pattern_root(pattern: str) -> str:
    """The folder a brace or glob pattern's names are reported relative to: its leading path
    components that hold no pattern character (``data/shards-{0..9}.tar`` -> ``data``)."""
    parts = Path(pattern).parts
    fixed = []
    for part in parts[:-1]:
        if any(c in part for c in "*?[{"):
            break
        fixed.append(part)
    return str(Path(*fixed)) if fixed else "."
