# syntax=docker/dockerfile:1
# The operator: Python slim, lmforge with the `operator` extra (kopf, the Kubernetes client,
# OpenTelemetry), no torch. From the repository root:
#   docker build -f images/operator.Dockerfile -t ghcr.io/lmforge/lmforge-operator:0.1.0 .
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator operator
COPY jobs jobs
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[operator]"

FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels "lmforge[operator]" \
    && rm -rf /wheels \
    && python -c "import sys, lmforge.operator.main; assert 'torch' not in sys.modules"
# Non-root, and nothing written to the image at run time (the chart mounts /tmp).
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["kopf", "run", "--module=lmforge.operator.main", "--standalone", \
            "--liveness=http://0.0.0.0:8080/healthz"]
CMD ["--all-namespaces"]
