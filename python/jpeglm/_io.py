"""Crash-safe file writes: every file jpeglm writes goes through here.

A write goes to a temporary file in the same folder, is flushed and fsynced, then renamed over
the target (atomic on POSIX), and the folder is fsynced so the rename itself is durable. A
reader therefore sees either the old file or the complete new one, never a torn write.
:func:`write_png` encodes a picture as PNG in memory and writes it the same way.

:func:`input_file` says what an input path is when it is not a readable file (nothing, a
folder, a link loop, a FIFO), in one line.

The guards of the user's files live here too: :func:`refuse_overwriting` (an output never
replaces an input), :func:`writable_folder` (fail before the work, not after it),
:func:`remove_own_temps` (clean up only the temporary files :func:`atomic_open` makes), the
output manifest ``.jpeglm-outputs`` (:func:`claim_outputs` before the work, each output listed
once it is in place: a rerun replaces only files jpeglm wrote) and :func:`folder_lock` (one
writer per folder: a trainer holds its run folder's ``.jpeglm-lock``).

Untrusted JSON and TOML text (model records, index files, train configs) is parsed by
:func:`parse_json` / :func:`parse_toml`: nesting deeper than :data:`MAX_NESTING` is one
``ValueError`` naming the file, never a ``RecursionError``.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", record: bool = False) -> Iterator[IO]:
    """Open a temporary file that replaces ``path`` atomically when the block exits cleanly.

    On an exception the temporary file is removed and ``path`` is left untouched. ``record``:
    ``path`` is an output of a command, listed in its folder's :data:`OUTPUTS_MANIFEST` once it
    is in place (:func:`record_outputs`; a crash between the rename and the listing is covered
    by a ``#pending`` line naming the very file written, see :func:`owned_outputs`).
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open supports 'wb' and 'w', got {mode!r}")
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    tmp = ""
    try:
        # The name is chosen before the file is created, inside the try: a Ctrl-C arriving
        # while it is being created (mkstemp would raise it before returning the name) still
        # finds the name to remove.
        while True:
            tmp = os.path.join(folder, f".{path.name}.{_random_tag()}.tmp")
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_EXTRA, 0o600)
                break
            except FileExistsError:
                continue
        os.chmod(tmp, _target_mode(path))  # created 0600 like mkstemp; give the usual permissions
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
            if record:
                _record_pending(path, os.fstat(f.fileno()))
        os.replace(tmp, path)
        if record:
            record_outputs([path])
    except BaseException:
        if tmp:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename durable
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


_O_EXTRA = getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)  # O_BINARY: Windows
_TAG_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789_"  # as tempfile.mkstemp


def _random_tag() -> str:
    return "".join(random.SystemRandom().choice(_TAG_CHARS) for _ in range(8))


def _target_mode(path: Path) -> int:
    """The existing file's permissions, or what a plain open() would give (0666 & ~umask)."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        mask = os.umask(0)
        os.umask(mask)
        return 0o666 & ~mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes, record: bool = False) -> None:
    """Write ``data`` to ``path`` atomically (temp file + fsync + rename); ``record``: as
    :func:`atomic_open`'s."""
    with atomic_open(path, "wb", record) as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str, record: bool = False) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically; ``record``: as :func:`atomic_open`'s."""
    with atomic_open(path, "w", record) as f:
        f.write(text)


def write_png(
    path: str | os.PathLike, image: np.ndarray | Image.Image, record: bool = False
) -> None:
    """Encode ``image`` (a uint8 array, as :func:`PIL.Image.fromarray` takes, or a PIL image)
    as PNG and write it to ``path`` atomically; ``record``: as :func:`atomic_open`'s."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    im = image if isinstance(image, Image.Image) else Image.fromarray(image)
    im.save(buf, "PNG")
    atomic_write_bytes(path, buf.getvalue(), record)


# ------------------------------------------------------------------------------------------------
# Guarding the user's files


def temp_target(name: str) -> str | None:
    """The target a temporary file of :func:`atomic_open` is for (``.{target}.XXXXXXXX.tmp``,
    ``XXXXXXXX`` eight of ``a-z0-9_``), or None when ``name`` is not such a file."""
    m = _TEMP_NAME.fullmatch(name)
    return m.group(1) if m else None


_TEMP_NAME = re.compile(r"\.(.+)\.[a-z0-9_]{8}\.tmp")


def remove_own_temps(folder: str | os.PathLike, is_target: Callable[[str], bool]) -> list[Path]:
    """Remove the temporary files that :func:`atomic_open` left in ``folder`` (a killed run)
    for the targets ``is_target`` accepts; every other file, ``.notes.tmp`` included, stays.
    Returns the removed paths."""
    removed = []
    for p in Path(folder).glob(".*.tmp"):
        target = temp_target(p.name)
        if target is not None and is_target(target) and p.is_file():
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p)
    return removed


def show(path: str | os.PathLike) -> str:
    """A path as printable text: bytes that are not UTF-8 appear as ``\\xNN``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def input_file(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a readable regular file, or one line that says what it is instead:
    ``FileNotFoundError`` when nothing is there (a link to nothing says so) or when it is a
    folder; ``ValueError`` for a loop of symbolic links, a FIFO, a socket or a device (reading
    those would hang or never end); ``PermissionError`` when it cannot be looked at."""
    import errno
    import stat

    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        if os.path.islink(path):
            raise FileNotFoundError(
                f"{what} file {show(path)} is a symbolic link to nothing "
                f"({show(os.readlink(path))})"
            ) from None
        raise FileNotFoundError(f"no such {what} file: {show(path)}") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ValueError(
                f"{what} file {show(path)} is a loop of symbolic links: point it at a file"
            ) from None
        if e.errno == errno.EACCES:
            raise PermissionError(
                f"cannot read the {what} file {show(path)}: {e.strerror}"
            ) from None
        raise ValueError(f"cannot read the {what} file {show(path)}: {e.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise FileNotFoundError(f"{show(path)} is a folder, not a {what} file")
    if not stat.S_ISREG(st.st_mode):
        kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(st.st_mode)
                else "a socket" if stat.S_ISSOCK(st.st_mode) else "a device")  # fmt: skip
        raise ValueError(f"{show(path)} is {kind}, not a {what} file: give a regular file")
    return path


def refuse_overwriting(
    targets: Iterable[str | os.PathLike], inputs: Iterable[str | os.PathLike]
) -> None:
    """Raise ValueError when a file about to be written is one of the inputs (the same file:
    device and inode, so links and ``..`` spellings count). Targets that do not exist yet
    cannot be inputs (call it once the output folder exists), so the inputs are only looked
    at when some target exists."""
    existing: dict[tuple[int, int], str | os.PathLike] = {}
    for t in targets:
        try:
            st = os.stat(t)
        except (OSError, ValueError):
            continue
        existing[(st.st_dev, st.st_ino)] = t
    if not existing:
        return
    for i in inputs:
        try:
            st = os.stat(i)
        except (OSError, ValueError):
            continue
        hit = existing.get((st.st_dev, st.st_ino))
        if hit is not None:
            raise ValueError(
                f"refusing to overwrite the input {show(i)} with the output {show(hit)}: "
                "choose another output folder"
            )


def writable_folder(folder: str | os.PathLike) -> Path:
    """Create ``folder`` (and its parents) if needed and check a file can be written in it,
    before any work; ValueError with one clear line otherwise."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError as e:
        raise ValueError(f"output folder {show(folder)} exists and is not a folder") from e
    except OSError as e:
        raise ValueError(f"cannot create output folder {show(folder)}: {e.strerror}") from e
    try:  # an unnamed file (O_TMPFILE) where the OS has them: nothing to clean up
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise ValueError(f"output folder {show(folder)} is not writable: {e.strerror}") from e
    return folder


#: the lock file of a folder one process at a time writes into (a trainer's run folder)
LOCK_FILE = ".jpeglm-lock"


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, who: str = "another process") -> Iterator[None]:
    """Hold an exclusive ``fcntl.flock`` on ``folder/.jpeglm-lock`` (created if needed; the
    holder's pid written in it) for the block. The kernel releases it when the holder dies, so a
    killed run never leaves a stale lock. Another holder: ValueError naming its pid. A no-op
    where the OS has no ``flock`` (Windows)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    path = Path(folder) / LOCK_FILE
    flags = os.O_RDWR | os.O_CREAT | _O_EXTRA | getattr(os, "O_NOFOLLOW", 0)  # never a link
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as e:
        raise ValueError(f"cannot open the lock file {show(path)}: {e.strerror}") from e
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(
                f"{show(folder)} is in use by {who} (pid {_lock_holder(fd)}, which holds "
                f"{LOCK_FILE}): wait for it to finish, or choose another folder"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _lock_holder(fd: int) -> str:
    """The pid written in a held lock file (it may take a moment to appear), or ``?``."""
    import time

    for _ in range(20):
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        if text.isdigit():
            return text
        time.sleep(0.05)
    return "?"


# ------------------------------------------------------------------------------------------------
# The output manifest: which files in a folder jpeglm wrote

#: in every output folder, the names of the files jpeglm wrote there: a rerun may replace
#: those, and nothing else
OUTPUTS_MANIFEST = ".jpeglm-outputs"
OUTPUTS_HEADER = "# files written here by jpeglm commands; a rerun may replace only these\n"
_PENDING = "#pending "
_MANIFEST_LIMIT = 64 << 20
#: the names known listed, per folder (what this process read or appended)
_listed: dict[str, set[str]] = {}


def _key(folder: Path) -> str:
    return os.path.realpath(folder)


def owned_outputs(folder: str | os.PathLike) -> set[str]:
    """The names in ``folder`` that jpeglm wrote: the manifest's lines (a line a crash left
    unfinished counts for nothing), and a name of a ``#pending`` line when the file there now is
    the very file that line describes (device, inode, size, modification time: the rename of a
    write that the crash cut off before listing it). ValueError when the manifest cannot be
    read."""
    folder = Path(folder)
    path = folder / OUTPUTS_MANIFEST
    try:
        if path.stat().st_size > _MANIFEST_LIMIT:
            raise ValueError(f"{show(path)} is too large to be jpeglm's list of outputs")
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
    except FileNotFoundError:
        text = ""
    except OSError as e:
        raise ValueError(f"cannot read {show(path)}: {e.strerror}") from e
    lines = text.split("\n")[:-1]  # the last piece has no newline: unfinished, ignored
    owned = {x for x in lines if x and not x.startswith("#")}
    _listed[_key(folder)] = set(owned)
    for x in lines:
        if x.startswith(_PENDING):
            ident, _, name = x[len(_PENDING) :].partition(" ")
            if name and name not in owned and _identity(folder / name) == ident:
                owned.add(name)
    return owned


def _identity(path: Path, st: os.stat_result | None = None) -> str | None:
    try:
        st = st or os.lstat(path)
    except OSError:
        return None
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"


def _append_manifest(folder: Path, lines: list[str]) -> None:
    """Append whole lines to ``folder``'s manifest (created with its header); a line is one
    ``write`` of an ``O_APPEND`` file, so a crash leaves at most one unfinished last line."""
    path = folder / OUTPUTS_MANIFEST
    if not os.path.lexists(path):
        atomic_write_text(path, OUTPUTS_HEADER)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | _O_EXTRA | getattr(os, "O_NOFOLLOW", 0))
    try:
        os.write(fd, "".join(x + "\n" for x in lines).encode("utf-8", "surrogateescape"))
    finally:
        os.close(fd)


def _record_pending(path: Path, st: os.stat_result) -> None:
    """Before ``path`` is replaced by the finished temporary file ``st``: a ``#pending`` line
    naming that file (unless ``path``'s name is listed already)."""
    folder = path.parent if str(path.parent) else Path(".")
    if path.name not in _listed_names(folder):
        _append_manifest(folder, [f"{_PENDING}{_identity(path, st)} {path.name}"])


def _listed_names(folder: Path) -> set[str]:
    names = _listed.get(_key(folder))
    if names is None:
        owned_outputs(folder)
        names = _listed[_key(folder)]
    return names


def record_outputs(paths: Iterable[str | os.PathLike]) -> None:
    """List each of ``paths`` that is in place (exists) in its folder's manifest, once."""
    by_folder: dict[Path, list[str]] = {}
    for p in map(Path, paths):
        if os.path.lexists(p) and "\n" not in p.name:
            by_folder.setdefault(p.parent if str(p.parent) else Path("."), []).append(p.name)
    for folder, names in by_folder.items():
        listed = _listed_names(folder)
        new = [n for n in dict.fromkeys(names) if n not in listed]
        if new:
            _append_manifest(folder, new)
            listed.update(new)


def claim_outputs(
    folder: str | os.PathLike,
    names: Iterable[str] | Callable[[str], bool],
    inputs: Iterable[str | os.PathLike] = (),
) -> list[Path]:
    """The files ``folder/NAME`` a run will write, checked before any work: the folder is
    created and checked writable; an output that is one of ``inputs`` is refused (after
    creating: ``new/..`` names the folder above only once it exists), and so is a file (or
    folder, or link) in the way that jpeglm did not write there. Nothing is listed yet: each
    output is, once in place (``record=True`` writes, :func:`record_outputs`). ValueError with
    one line otherwise.

    ``names`` may instead be a test of a name (outputs too many to list, ``sample -n 10**9``):
    then the folder's entries are the ones checked, and ``[]`` is returned."""
    folder = Path(folder)
    writable_folder(folder)
    if callable(names):
        with os.scandir(folder) as entries:
            targets = [folder / e.name for e in entries if names(e.name)]
        planned = []
    else:
        targets = planned = [folder / n for n in names]
    refuse_overwriting(targets, inputs)
    owned = owned_outputs(folder)
    record_outputs(folder / n for n in owned - _listed[_key(folder)])  # pending, in place
    for t in targets:
        if os.path.lexists(t) and t.name not in owned:
            raise ValueError(
                f"{show(t)} exists and was not written by jpeglm: choose another output folder "
                "(or move it away)"
            )
    return planned


# ------------------------------------------------------------------------------------------------
# Untrusted JSON / TOML: bounded nesting

#: the deepest nesting jpeglm's own JSON / TOML files use is 4; anything past this is hostile
MAX_NESTING = 64


def too_deep(what: str, limit: int = MAX_NESTING) -> ValueError:
    """The one-line error for ``what`` nested deeper than ``limit`` levels."""
    return ValueError(f"{what} is nested deeper than {limit} levels: not a jpeglm file")


def check_nesting(obj: object, what: str, limit: int = MAX_NESTING) -> None:
    """ValueError naming ``what`` when the lists / dicts in ``obj`` nest deeper than ``limit``
    (checked without recursion)."""
    stack = [(obj, 1)]
    while stack:
        x, depth = stack.pop()
        if isinstance(x, dict):
            children = x.values()
        elif isinstance(x, list):
            children = x
        else:
            continue
        if depth > limit:
            raise too_deep(what, limit)
        stack.extend((c, depth + 1) for c in children)


def parse_json(text: str | bytes, what: str, limit: int = MAX_NESTING) -> object:
    """``json.loads(text)`` for untrusted text: ValueError naming ``what`` (a file's name) when
    it is not JSON or nests deeper than ``limit`` (the parser's own RecursionError included)."""
    import json

    try:
        obj = json.loads(text)
    except RecursionError:
        raise too_deep(what, limit) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{what} is not valid JSON: {e}") from e
    check_nesting(obj, what, limit)
    return obj


def parse_toml(text: str, what: str, limit: int = MAX_NESTING) -> dict:
    """``tomllib.loads(text)`` for untrusted text, as :func:`parse_json` (``tomli`` before
    Python 3.11)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # pragma: no cover - Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]

    try:
        obj = tomllib.loads(text)
    except RecursionError:
        raise too_deep(what, limit) from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{what} is not valid TOML: {e}") from e
    check_nesting(obj, what, limit)
    return obj
