"""FastChat's per-category sampling temperatures (MT-Bench), as upstream answers at them."""
from __future__ import annotations

import ast
import functools
import importlib.util
import os
import warnings

from prompt.errors import PPDError


@functools.lru_cache(maxsize=1)
def fastchat_temperatures() -> dict:
    """FastChat's sampling temperature of each MT-Bench category (`fastchat.llm_judge.common.temperature_config`).
    That module imports the judges' API clients (openai, anthropic); without them its value is read from its source."""
    try:
        from fastchat.llm_judge.common import temperature_config

        return dict(temperature_config)
    except ImportError:
        pass
    spec = importlib.util.find_spec("fastchat")
    path = os.path.join(os.path.dirname(spec.origin), "llm_judge", "common.py") if spec and spec.origin else ""
    try:
        with open(path, encoding="utf-8") as f, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its regular expressions' escapes
            module = ast.parse(f.read())
        for node in module.body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "temperature_config" for t in node.targets):
                return dict(ast.literal_eval(node.value))
    except (OSError, SyntaxError, ValueError):
        pass
    raise PPDError("cannot read FastChat's per-category temperatures (fastchat.llm_judge.common.temperature_config); "
                   "pass --temperature")


def question_temperature(question: dict, temperature: float | None) -> float:
    """--temperature when given; else FastChat's temperature for the question's category, 0 for other categories
    (as upstream)."""
    if temperature is not None:
        return temperature
    return float(fastchat_temperatures().get(question.get("category"), 0.0))


def temperatures_in_use(questions, temperature: float | None) -> dict:
    """{temperature: sorted categories} over `questions`, each at `question_temperature`, lowest temperature first."""
    used = {}
    for question in questions:
        used.setdefault(question_temperature(question, temperature), set()).add(str(question.get("category") or ""))
    return {t: sorted(used[t]) for t in sorted(used)}
