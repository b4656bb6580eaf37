"""A real offline fine-tuning task from the Python standard library: prompt = a function's
signature and docstring, response = its body; for preferences, rejected = the body corrupted
(its lines shuffled, its names wrong, or cut short). Every Python installation has the data.
"""

from __future__ import annotations

import ast
import random
import re
import sysconfig
from collections.abc import Iterator
from pathlib import Path


def functions(root: Path | None = None, max_lines: int = 12) -> Iterator[dict[str, str]]:
    """{"prompt", "response"} for each documented function of at most `max_lines` body lines,
    in a stable order."""
    for prompt, response, _ in _functions(root, max_lines):
        yield {"prompt": prompt, "response": response}


def preferences(root: Path | None = None, max_lines: int = 12) -> Iterator[dict[str, str]]:
    """{"prompt", "chosen", "rejected", "corruption"}: the real body over a corrupted one, the
    kind of corruption taking turns among those that change the body; seeded by the prompt."""
    kinds = list(CORRUPTIONS)
    for n, (prompt, body, names) in enumerate(_functions(root, max_lines)):
        rng = random.Random(prompt)
        for kind in kinds[n % 3 :] + kinds[: n % 3]:
            rejected = CORRUPTIONS[kind](body, names, rng)
            if rejected.strip() and rejected != body:
                yield {"prompt": prompt, "chosen": body, "rejected": rejected, "corruption": kind}
                break


def _shuffled(body: str, names: list[str], rng: random.Random) -> str:
    lines = body.splitlines()
    rng.shuffle(lines)
    return "\n".join(lines)


def _renamed(body: str, names: list[str], rng: random.Random) -> str:
    """A parameter the body uses replaced by another one, or by a name nothing defines."""
    used = [n for n in names if re.search(rf"\b{n}\b", body)]
    if not used:
        return body
    old = rng.choice(used)
    new = rng.choice([n for n in names if n != old] or [f"{old}_"])
    return re.sub(rf"\b{old}\b", new, body)


def _truncated(body: str, names: list[str], rng: random.Random) -> str:
    lines = body.splitlines()
    return "\n".join(lines[: len(lines) // 2])


CORRUPTIONS = {"shuffled": _shuffled, "renamed": _renamed, "truncated": _truncated}


def _functions(root: Path | None, max_lines: int) -> Iterator[tuple[str, str, list[str]]]:
    """(signature and docstring, body, parameter names) of each documented function."""
    root = root or Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.rglob("*.py")):
        if "site-packages" in path.parts or "test" in path.parts:
            continue
        try:
            source = path.read_text(encoding="utf-8")
            tree = ast.parse(source)
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        lines = source.splitlines()
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef) or not ast.get_docstring(node):
                continue
            doc, body = node.body[0], node.body[1:]
            if not body or body[-1].end_lineno - doc.end_lineno > max_lines:
                continue
            prompt = "\n".join(lines[node.lineno - 1 : doc.end_lineno])
            response = "\n".join(lines[doc.end_lineno : body[-1].end_lineno])
            if prompt.strip() and response.strip():
                arguments = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
                names = [a.arg for a in arguments if a.arg not in ("self", "cls")]
                yield prompt, response, names
