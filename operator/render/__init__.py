"""Pure renderers: a parsed resource (and what its references resolved to) in, child manifests,
status and events out.

Nothing here does I/O, imports kopf or a Kubernetes client, or reads the clock: the handlers pass
`now` in. Every function is tested on plain dicts, table-driven, without a cluster.
"""
