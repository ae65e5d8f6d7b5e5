"""Files rlbase writes and reads back: written atomically and durably, read as untrusted input.

Everything read from a run directory or an artifact may have been hand-edited, planted or cut off
by a crash: these helpers check it is a regular file of sane size, inside the folder it should
be in, and well-formed, and say what is wrong in one line naming the file. Nothing is unpickled.
Disk faults while writing (full disk, read-only folder) become one line naming the path and the
cause (`DiskError`), never a traceback.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path
from typing import Any

from rlbase.errors import RlbaseError

MAX_JSON_BYTES = 64 << 20
"""Run-file JSON larger than this is refused (config.json, state.json, latest.json are kilobytes)."""

# First bytes of a pickle (the PROTO opcode of protocols 2 to 5) and of torch.save's zip archive.
_PICKLE_MAGIC = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05", b"PK\x03\x04")


class DiskError(RlbaseError):
    """Writing failed for a reason of the disk (no space, read-only, permission): exit code 1."""


def disk_error(exc: OSError, what: str, path: str | Path | None = None) -> DiskError:
    """One line for an OSError while writing `what`: the path and the cause."""
    where = path or exc.filename
    cause = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno == errno.ENOSPC:
        cause = "no space left on the device"
    elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        cause = f"{cause} (is the folder read-only?)"
    return DiskError(f"could not write {what}" + (f" {where}" if where else "") + f": {cause}")


def fsync_path(path: str | Path) -> None:
    """fsync a file or a folder (a folder: so renames and new entries inside it are durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` through a synced temporary file and a rename: readers see the old
    content or the new one, never part of it. The temporary file is removed if writing fails;
    the folder is synced after the rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    fsync_path(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    """`atomic_write_bytes` of `text` in UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))


def regular_file(path: str | Path, what: str = "") -> Path:
    """`path` if it is a regular file (a FIFO or device would block or stream forever), else a one-line error."""
    path = Path(path)
    label = f"{what} {path}" if what else str(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise RlbaseError(f"{label} is missing") from None
    except OSError as exc:
        raise RlbaseError(f"{label} cannot be read ({exc.strerror})") from None
    if not stat.S_ISREG(mode):
        raise RlbaseError(f"{label} is not a regular file")
    return path


def read_json(path: str | Path, what: str = "", max_bytes: int = MAX_JSON_BYTES) -> Any:
    """The JSON value in `path`, read as untrusted: a regular file of at most `max_bytes`, UTF-8,
    valid JSON without NaN/Infinity. One-line RlbaseError otherwise."""
    path = regular_file(path, what)
    label = f"{what} {path}" if what else str(path)
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as exc:
        raise RlbaseError(f"{label} cannot be read ({exc.strerror})") from None
    if len(data) > max_bytes:
        raise RlbaseError(f"{label} is corrupt (larger than {max_bytes} bytes)")
    try:
        return json.loads(data.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise RlbaseError(f"{label} is corrupt (not JSON: {str(exc).splitlines()[0]})") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def is_inside(path: str | Path, root: str | Path) -> bool:
    """Whether `path`, with symlinks resolved, lies inside `root` (resolved too)."""
    try:
        Path(path).resolve().relative_to(Path(root).resolve())
    except ValueError:
        return False
    return True


def is_pickle(head: bytes) -> bool:
    """Whether a file's first bytes look like a pickle or a torch.save archive (not safetensors)."""
    return any(head.startswith(magic) for magic in _PICKLE_MAGIC)


def safetensors_problem(path: str | Path) -> str | None:
    """What is wrong with the safetensors file at `path` ("truncated ...", "a pickle ..."), or None
    if its header is well-formed and the data it describes is all there. Reads the header only."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return "is truncated (shorter than a safetensors header)" if not is_pickle(head) else PICKLED
            length = int.from_bytes(head, "little")
            if length > 100_000_000 or 8 + length > size:
                if is_pickle(head):
                    return PICKLED
                return f"is truncated ({size} bytes, the header alone says {8 + length})" \
                    if length <= 100_000_000 else "is not a safetensors file (bad header length)"
            header = f.read(length)
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    try:
        meta = json.loads(header.decode("utf-8"))
        end = max((int(v["data_offsets"][1]) for k, v in meta.items() if k != "__metadata__"), default=0)
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, IndexError):
        return PICKLED if is_pickle(head) else "is not a safetensors file (unreadable header)"
    if 8 + length + end > size:
        return f"is truncated ({size} bytes of {8 + length + end})"
    return None


PICKLED = "is a pickle or torch.save file; rlbase never unpickles (a pickle can run code) and loads safetensors only"


def save_safetensors(tensors: dict, path: str | Path) -> None:
    """safetensors' `save_file`, then fsync; its I/O failures (full disk, ...) come out as OSError
    with their errno, like any other write."""
    import re

    from safetensors import SafetensorError
    from safetensors.torch import save_file

    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path))
    except SafetensorError as exc:
        code = re.search(r"os error (\d+)", str(exc))
        number = int(code.group(1)) if code else errno.EIO
        raise OSError(number, os.strerror(number), str(path)) from None
    fsync_path(path)


def load_safetensors(path: str | Path, device: Any = "cpu", error: type[RlbaseError] = RlbaseError) -> dict:
    """The tensors of a safetensors file, checked first (regular file, header, size, not a pickle):
    one line naming the file otherwise (`error` is the exception class to raise)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        path = regular_file(path, "")
    except RlbaseError as exc:
        raise error(str(exc)) from None
    problem = safetensors_problem(path)
    if problem is not None:
        raise error(f"{path} {problem}")
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError) as exc:
        lines = str(exc).splitlines() or [type(exc).__name__]
        raise error(f"{path} is not a valid safetensors file ({lines[0]})") from None
