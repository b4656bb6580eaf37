"""Python run in the Dataset and Evaluation pods around their jobs' entry points.

Each job writes its result to object storage; the operator, which has no object-store client,
needs a summary of it. These wrappers run the job's own `main()`, then print one JSON line,
`{"event": "done", ...}`, the same protocol as the trainer's progress events, and also write it
to the termination message, which reaches the pod's status even where logs cannot be read.
They are stopgaps: once `python -m lmforge.jobs.data` and `lmforge.jobs.eval` print that line
themselves, the pods run the modules directly.
"""

from __future__ import annotations

_REPORT = """
def report(summary):
    line = json.dumps({"event": "done", **summary})
    if len(line) > 4000:  # the termination message keeps 4096 bytes; drop the long list
        line = json.dumps({"event": "done", **{k: v for k, v in summary.items() if k != "sources"}})
    print(line, flush=True)
    try:
        with open("/dev/termination-log", "w") as out:
            out.write(line)
    except OSError:
        pass
"""

DATA = (
    "import json, sys\n"
    "from lmforge.jobs.data.job import main\n"
    + _REPORT
    + """
code = main(sys.argv[1:])  # --config PATH --output URI
if code == 0:
    from lmforge.jobs.storage import filesystem, join
    with open(sys.argv[2]) as stream:
        endpoint = json.load(stream)["spec"].get("storage", {}).get("endpointUrl")
    fs, root = filesystem(sys.argv[4], endpoint)
    manifest = json.loads(fs.cat_file(join(root, "manifest.json")))
    splits = manifest["splits"].values()
    report({
        "output": sys.argv[4],
        "documentsOut": sum(s["documents"] for s in splits),
        "tokens": sum(s["tokens"] for s in splits),
        "shards": sum(len(s["shards"]) for s in splits),
        "tokenizerDigest": manifest["tokenizer"]["digest"],
        "configDigest": manifest["configDigest"],
        "lmforgeVersion": manifest["lmforgeVersion"],
        "sources": [{"uri": s["uri"], "digest": s["digest"]} for s in manifest["sources"]],
    })
sys.exit(code)
"""
)

EVALUATION = (
    "import json, sys\n"
    "from lmforge.jobs.eval.__main__ import main\n"
    + _REPORT
    + """
config, out, results_uri = sys.argv[1:4]
code = main(["--config", config, "--out", out])
if code == 0:
    from lmforge.jobs.storage import filesystem, write_atomic
    with open(out) as stream:
        results = json.load(stream)
    with open(config) as stream:
        endpoint = json.load(stream).get("endpointUrl")
    fs, path = filesystem(results_uri, endpoint)
    write_atomic(fs, path, json.dumps(results, indent=2).encode())
    report({"output": results_uri, "results": results["results"],
            "passed": results["passed"], "missed": results["missed"]})
sys.exit(code)
"""
)
