"""kopf handlers, one module per kind: read the resource, resolve its references, render its
children, apply them, observe its pods, compute status, patch it once. Importing a kind's module
registers its handlers with kopf; operator/main.py imports them all."""
