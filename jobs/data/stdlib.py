"""stdlib://, the standard library of the running Python as a read-only fsspec filesystem, and
stdlib-tasks://, fine-tuning tasks built from it.

A real corpus that every machine has, with nothing to download: `stdlib://**/*.py` is its source
(site-packages excluded: that is not the standard library). stdlib-tasks://functions/ holds the
task of jobs/finetune/functions.py as jsonl files, in a train and a test split (a tenth of the
functions, by a hash of the prompt): `sft.jsonl` (prompt, response), `preferences.jsonl`
(prompt, chosen, rejected), `prompts.jsonl`, and `chat.jsonl` for Evaluation's generation tasks
(the prompt rendered as a chat request, the real body as reference); `test/` the same for
held-out functions.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import sysconfig
import tempfile
import zlib

import fsspec
from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem

PROTOCOL = "stdlib"


class StdlibFileSystem(DirFileSystem):
    protocol = PROTOCOL

    def __init__(self, **kwargs):
        super().__init__(path=sysconfig.get_paths()["stdlib"], fs=LocalFileSystem(), **kwargs)

    @classmethod
    def _strip_protocol(cls, path):
        path = path[len(PROTOCOL) + 3 :] if path.startswith(PROTOCOL + "://") else path
        return path.lstrip("/")

    # Everything that lists files goes through one of these; hide site-packages from each.
    def ls(self, path, detail=True, **kwargs):
        return self._visible(super().ls(path, detail=detail, **kwargs))

    def find(self, path, *args, **kwargs):
        return self._visible(super().find(path, *args, **kwargs))

    def glob(self, path, **kwargs):
        return self._visible(super().glob(path, **kwargs))

    @staticmethod
    def _visible(entries):
        def name(entry):
            return entry["name"] if isinstance(entry, dict) else entry

        def keep(entry):
            return not name(entry).lstrip("/").startswith("site-packages")

        if isinstance(entries, dict):
            return {k: v for k, v in entries.items() if keep(k)}
        return [e for e in entries if keep(e)]

    def unstrip_protocol(self, name):
        return f"{PROTOCOL}://{name.lstrip('/')}"


TASKS = "stdlib-tasks"
TASK_VERSION = 2
"""Raise when what the files hold changes: they are generated once per machine into a cache."""


class TasksFileSystem(DirFileSystem):
    protocol = TASKS

    def __init__(self, **kwargs):
        version = ".".join(map(str, sys.version_info[:3]))
        root = os.path.join(tempfile.gettempdir(), f"lmforge-{TASKS}-{version}-v{TASK_VERSION}")
        if not os.path.exists(root):
            _write_tasks(root)
        super().__init__(path=root, fs=LocalFileSystem(), **kwargs)

    @classmethod
    def _strip_protocol(cls, path):
        path = path[len(TASKS) + 3 :] if path.startswith(TASKS + "://") else path
        return path.lstrip("/")

    def unstrip_protocol(self, name):
        return f"{TASKS}://{name.lstrip('/')}"


def _write_tasks(root: str) -> None:
    """The functions task's files, written to a folder beside `root` then renamed into place,
    so a reader never sees a part."""
    from lmforge.jobs.chat import render
    from lmforge.jobs.finetune.functions import preferences

    files: dict[str, list[str]] = {}
    for row in preferences(max_lines=6):
        if len(row["prompt"]) + len(row["chosen"]) > 500:  # fits a 256-token context
            continue
        user = [{"role": "user", "content": row["prompt"]}]
        split = "test/" if zlib.crc32(row["prompt"].encode()) % 10 == 0 else ""
        for name, record in (
            ("sft", {"prompt": row["prompt"], "response": row["chosen"]}),
            ("preferences", row),
            ("prompts", {"prompt": row["prompt"]}),
            ("chat", {"prompt": render(user), "reference": row["chosen"]}),
        ):
            files.setdefault(f"functions/{split}{name}.jsonl", []).append(json.dumps(record))
    staging = tempfile.mkdtemp(dir=os.path.dirname(root))
    for name, lines in files.items():
        os.makedirs(os.path.join(staging, os.path.dirname(name)), exist_ok=True)
        with open(os.path.join(staging, name), "w") as out:
            out.write("\n".join(lines) + "\n")
    try:
        os.rename(staging, root)
    except OSError:  # another process wrote it first
        shutil.rmtree(staging, ignore_errors=True)


def register() -> None:
    fsspec.register_implementation(PROTOCOL, StdlibFileSystem, clobber=True)
    fsspec.register_implementation(TASKS, TasksFileSystem, clobber=True)
