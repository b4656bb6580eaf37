"""Print the pinned requirements of lmforge's extras (self-references expanded), one per line.

The images install these in a layer of their own before the source is copied, so that a code
change rebuilds only the last layer:  pip install $(python requirements.py pyproject.toml serve)
"""

import re
import sys
import tomllib


def requirements(project: dict, extras: list[str]) -> list[str]:
    optional = project["optional-dependencies"]
    found, todo = list(project["dependencies"]), list(extras)
    while todo:
        for req in optional[todo.pop()]:
            if m := re.fullmatch(r"lmforge\[(.+)\]", req):
                todo += m[1].split(",")
            elif req not in found:
                found.append(req)
    return found


if __name__ == "__main__":
    with open(sys.argv[1], "rb") as f:
        print("\n".join(requirements(tomllib.load(f)["project"], sys.argv[2].split(","))))
