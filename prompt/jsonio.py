"""Reading JSON and JSON Lines input with one clear error for a missing or malformed file."""
from __future__ import annotations

import json

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
