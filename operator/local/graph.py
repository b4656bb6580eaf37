"""Order resources by their references; refuse dangling references and cycles, naming them."""

from __future__ import annotations

from graphlib import CycleError, TopologicalSorter

from lmforge.operator.api.resource import Resource


class GraphError(ValueError):
    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


def key(resource: Resource) -> tuple[str, str]:
    return resource.kind, resource.metadata.name


def order(resources: list[Resource], where: dict[tuple[str, str], str]) -> list[Resource]:
    """Every resource after everything it references, in file order otherwise.

    `where` maps (kind, name) to the file it came from, for messages."""
    by_key, problems = {}, []
    for resource in resources:
        if key(resource) in by_key:
            problems.append(f"{where[key(resource)]}: {'/'.join(key(resource))}: defined twice")
        by_key[key(resource)] = resource
    graph = TopologicalSorter()
    for resource in resources:
        needed = []
        for ref in resource.references():
            if (ref.kind, ref.name) not in by_key:
                problems.append(
                    f"{where[key(resource)]}: {'/'.join(key(resource))}: {ref.field}: refers to"
                    f" {ref.kind}/{ref.name}, which is not in the files given"
                )
            else:
                needed.append((ref.kind, ref.name))
        graph.add(key(resource), *needed)
    if problems:
        raise GraphError(problems)
    try:
        graph.prepare()
    except CycleError as error:
        cycle = " -> ".join("/".join(k) for k in error.args[1])
        first = where[error.args[1][0]]
        raise GraphError([f"{first}: the references form a cycle: {cycle}"]) from error
    return _in_file_order(resources)


def _in_file_order(resources: list[Resource]) -> list[Resource]:
    """A topological order that keeps file order wherever the references allow (no cycles)."""
    placed, out, remaining = set(), [], list(resources)
    while remaining:
        for resource in remaining:
            if all((r.kind, r.name) in placed for r in resource.references()):
                out.append(resource)
                placed.add(key(resource))
                remaining.remove(resource)
                break
    return out
