# syntax=docker/dockerfile:1
# The serving image for Deployment resources: an OpenAI-compatible HTTP server (FastAPI, uvicorn)
# over the exported model (lmforge.jobs.serve; the operator passes --config). From the repository
# root:
#   docker build -f images/serve.Dockerfile -t ghcr.io/lmforge/lmforge-serve:0.1.0 .
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator operator
COPY jobs jobs
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[serve]"

FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels "lmforge[serve]" \
    && rm -rf /wheels \
    && useradd --uid 1000 --create-home lmforge
USER 1000:1000
EXPOSE 8000
CMD ["python", "-m", "lmforge.jobs.serve", "--host", "0.0.0.0", "--port", "8000"]
