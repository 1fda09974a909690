"""Answer files (FastChat JSON Lines rows), kept whole whatever happens to a run.

- Before any model loads, `AnswerFile.open` checks that the file can be written (folder, permissions, free
  space), removes a partial last line left by a run that was killed or ran out of disk (with a warning), and
  reads which questions it already answers: a rerun answers only the others.
- Each row is appended in one write; a failed write (a full disk) is undone, so the file never holds a partial
  row, and the run stops with one clear line.
- At the end `reorganize` keeps one row per (question, model), the latest, sorted by question id (as FastChat
  does), and rewrites the file atomically.
"""
from __future__ import annotations

import json
import os
import shutil
import sys

from prompt.errors import PPDError
from prompt.jsonio import write_text


def _key(row) -> tuple:
    return (row.get("question_id"), row.get("model_id"))


def _sort_key(row) -> tuple:
    qid = row.get("question_id")
    return (isinstance(qid, str), qid if isinstance(qid, (int, float, str)) else str(qid), str(row.get("model_id")))


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


class AnswerFile:
    def __init__(self, path: str):
        self.path = path
        self.answered: set = set()  # (question_id, model_id) of the rows already in the file

    # ----------------------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str) -> "AnswerFile":
        """Check that `path` can be written, repair a partial last line, and read what it already answers."""
        answers = cls(path)
        answers._check_writable()
        answers._repair_last_line()
        for row in answers.rows(warn=True):
            answers.answered.add(_key(row))
        return answers

    def _check_writable(self) -> None:
        path = self.path
        if os.path.isdir(path):
            raise PPDError(f"cannot write answer file {path!r}: it is a folder")
        if os.path.exists(path) and not os.path.isfile(path):  # rewritten at the end: it must be a plain file
            raise PPDError(f"cannot write answer file {path!r}: it is not a regular file")
        parent = os.path.dirname(os.path.abspath(path))
        try:
            os.makedirs(parent, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise PPDError(f"cannot write answer file {path!r}: a part of its folder {parent!r} is a file") from None
        except OSError as exc:
            raise PPDError(f"cannot create the folder of answer file {path!r}: {exc.strerror}") from None
        existed = os.path.exists(path)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
            os.close(fd)
        except OSError as exc:
            raise PPDError(f"cannot write answer file {path!r}: {exc.strerror}") from None
        if not existed:
            os.remove(path)
        # the file is rewritten through a temporary file beside it at the end: the folder must take new files
        if not os.access(parent, os.W_OK):
            raise PPDError(f"cannot write answer file {path!r}: its folder {parent!r} is not writable")
        if shutil.disk_usage(parent).free < 4096:
            raise PPDError(f"cannot write answer file {path!r}: no space left on the disk of {parent!r}")

    def _repair_last_line(self) -> None:
        """Cut a last line without its newline (a row cut short by a kill or a full disk) off the file."""
        if not os.path.isfile(self.path):
            return
        with open(self.path, "rb+") as f:
            size = f.seek(0, os.SEEK_END)
            if size == 0:
                return
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return
            start = max(0, size - (1 << 20))
            while True:  # find the last newline
                f.seek(start)
                tail = f.read(size - start)
                cut = tail.rfind(b"\n")
                if cut >= 0 or start == 0:
                    break
                start = max(0, start - (1 << 20))
            keep = start + cut + 1 if cut >= 0 else 0
            f.truncate(keep)
        _warn(f"{self.path} ended with a partial line of {size - keep} bytes (a run that was cut off); "
              "removed it: its question is answered again")

    def rows(self, warn: bool = False) -> list:
        """The answer rows in the file; lines that are not rows are skipped (with a warning if `warn`)."""
        if not os.path.isfile(self.path):
            return []
        rows = []
        try:
            with open(self.path, encoding="utf-8", errors="replace") as f:
                for number, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        row = None
                    if not isinstance(row, dict) or "question_id" not in row:
                        if warn:
                            _warn(f"{self.path}: line {number} is not an answer row; it is dropped when this run ends")
                        continue
                    rows.append(row)
        except OSError as exc:
            raise PPDError(f"cannot read answer file {self.path!r}: {exc.strerror}") from None
        return rows

    # ----------------------------------------------------------------------------------------------
    def is_answered(self, question_id, model_id) -> bool:
        return (question_id, model_id) in self.answered

    def append(self, row: dict) -> None:
        """Append one row in one write; if the write fails, cut the file back to where it was and stop clearly."""
        data = (json.dumps(row) + "\n").encode("utf-8")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            size = os.fstat(fd).st_size
            try:
                written = os.write(fd, data)
                if written != len(data):
                    raise OSError(28, "No space left on device (short write)")
                os.fsync(fd)
            except OSError as exc:
                try:
                    os.ftruncate(fd, size)
                except OSError:
                    pass
                raise PPDError(f"cannot write answer file {self.path!r}: {exc.strerror}; the {len(self.answered)} "
                               "answers written so far are kept, and a rerun answers the rest") from None
        finally:
            os.close(fd)
        self.answered.add(_key(row))

    def reorganize(self) -> int:
        """Keep the latest row of each (question, model), sorted by question id; rewrite the file atomically.
        Returns the number of rows."""
        latest = {}
        for row in self.rows():
            latest[_key(row)] = row
        rows = sorted(latest.values(), key=_sort_key)
        write_text(self.path, "".join(json.dumps(row) + "\n" for row in rows))
        return len(rows)

    def tidy(self) -> int | None:
        """`reorganize`, with a warning instead of an error if the rewrite fails (the rows are all there already)."""
        try:
            return self.reorganize()
        except PPDError as exc:
            _warn(f"{self.path} holds every answer but could not be sorted and de-duplicated ({exc}); a rerun does that")
            return None
