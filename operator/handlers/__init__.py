"""kopf handlers: one pass for every kind that runs a job (reconcile.py) and one for the
Deployment's server (deployment.py), each reading the resource, describing it (operator/stages),
rendering and deciding (operator/render), and carrying the decision out through operator/kube.py.
operator/main.py registers them for every kind."""
