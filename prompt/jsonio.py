"""Reading JSON and JSON Lines input with one clear error for a missing or malformed file, and writing any
file atomically (a temporary name in the same folder, then `os.replace`): a reader, or a run killed or out of
disk mid-write, sees the old file or the new one, never a part of one."""
from __future__ import annotations

import json
import os
import shutil
import uuid

from prompt.errors import PPDError


def read_json(path: str, what: str):
    """Parse the JSON document at `path`; `what` names the file in errors ("tree spec file", ...)."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise PPDError(f"{what} {path!r} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PPDError(f"malformed {what} {path!r}: {exc}") from None


def parse_jsonl(lines, path: str, what: str) -> list:
    """Parse JSON Lines (blank lines skipped); the error names the first bad line."""
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise PPDError(f"malformed {what} {path!r}: line {number}: {exc.msg}") from None
    return records


# --------------------------------------------------------------------------------------------------
# atomic writing
def current_umask() -> int:
    """The process umask, read without changing it (Linux), else by setting and restoring it."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def temporary_name(path: str) -> str:
    """A fresh name beside `path` for writing it, with the same extension (writers that infer the format from it)."""
    folder, name = os.path.split(os.path.abspath(path))
    stem, ext = os.path.splitext(name)
    return os.path.join(folder, f".{stem}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}{ext}")


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot sync; the rename is still atomic
    finally:
        os.close(fd)


def _disk_full(path: str) -> bool:
    try:
        return shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free < (1 << 20)
    except OSError:
        return False


def atomic_write(path: str, write) -> str:
    """Write `path` atomically: `write(temporary_path)` creates the file, which then replaces `path`.

    The file gets ordinary permissions (0666 minus the umask, whatever mode the writer created it with).
    A failure (full disk, no permission, a folder where the file should go) leaves `path` as it was and
    raises PPDError naming it; any other exception also leaves it as it was, and is re-raised.
    """
    path = os.path.realpath(os.fspath(path))  # through a symbolic link: the link stays, its target is replaced
    if os.path.isdir(path):
        raise PPDError(f"cannot write {path}: it is a folder")
    if os.path.exists(path) and not os.path.isfile(path):  # a device or a pipe must never be replaced by a file
        raise PPDError(f"cannot write {path}: it is not a regular file")
    tmp = temporary_name(path)
    try:
        write(tmp)
        _fsync(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.remove(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise PPDError(f"cannot write {path}: {exc.strerror or exc}") from None
        if isinstance(exc, Exception) and _disk_full(path):  # writers that wrap the error (torch.save's zip writer)
            raise PPDError(f"cannot write {path}: no space left on the disk ({exc})") from None
        raise
    return path


def write_bytes(path: str, data: bytes) -> str:
    """Write bytes atomically. Serialize first (`safetensors.torch.save`, `torch.save` into a BytesIO), then write
    here: a full disk then raises instead of being missed (safetensors' own file writer can drop the error)."""
    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)
    return atomic_write(path, write)


def write_text(path: str, text: str) -> str:
    """Write a text file (UTF-8) atomically."""
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    return atomic_write(path, write)


def write_json(path: str, data, indent: int | None = 1, sort_keys: bool = False, **kwargs) -> str:
    """Write `data` as a JSON document (newline-terminated) atomically."""
    return write_text(path, json.dumps(data, indent=indent, sort_keys=sort_keys, **kwargs) + "\n")
