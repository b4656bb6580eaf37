# The operator: lmforge with the `operator` extra (kopf, the Kubernetes client, OpenTelemetry),
# no torch. From the repository root (images/README.md; images/build.sh builds all):
#   docker build -f images/operator.Dockerfile -t ghcr.io/lmforge/lmforge-operator:0.1.0 .
# BASE is any image with Python 3.11 as `python` and `pip` on the PATH.
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# The operator's user has a passwd entry: kopf names its peering identity after getpass.getuser().
RUN useradd --uid 65532 --user-group --no-create-home --shell /usr/sbin/nologin lmforge
COPY images/requirements.py pyproject.toml /src/
RUN pip install $(python /src/requirements.py /src/pyproject.toml operator)
COPY README.md /src/
COPY operator /src/operator
COPY jobs /src/jobs
RUN pip install --no-deps /src && rm -rf /src \
    && python -c "import sys, lmforge.operator.main; assert 'torch' not in sys.modules"
# Non-root, and nothing written to the image at run time (the chart mounts /tmp).
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["kopf", "run", "--module=lmforge.operator.main", "--standalone", \
            "--liveness=http://0.0.0.0:8080/healthz"]
CMD ["--all-namespaces"]
