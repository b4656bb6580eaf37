"""A real offline fine-tuning task from the Python standard library: prompt = a function's
signature and docstring, response = its body. Every Python installation has the data."""

from __future__ import annotations

import ast
import sysconfig
from collections.abc import Iterator
from pathlib import Path


def functions(root: Path | None = None, max_lines: int = 12) -> Iterator[dict[str, str]]:
    """{"prompt", "response"} for each documented function of at most `max_lines` body lines,
    in a stable order."""
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
                yield {"prompt": prompt, "response": response}
