# The serving image for Deployment resources: an OpenAI-compatible HTTP server (FastAPI, uvicorn)
# over the exported model (lmforge.jobs.serve; the operator passes --config). From the repository
# root (images/README.md; images/build.sh builds all):
#   docker build -f images/serve.Dockerfile -t ghcr.io/lmforge/lmforge-serve:0.1.0 .
# BASE is any image with Python 3.11 as `python` and `pip` on the PATH.
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 HOME=/home/lmforge
# CPU torch by default: a server pod with a GPU runs the job image's CUDA build instead
# (spec.resources.image). Where that index is unreachable, TORCH_INDEX=https://pypi.org/simple
# gives PyPI's CUDA build, which runs on CPU too, as the same layer as the trainer image's.
ARG TORCH=torch==2.15.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install --index-url "${TORCH_INDEX}" "${TORCH}" \
    && useradd --uid 1000 --create-home --home-dir /home/lmforge lmforge
COPY images/requirements.py pyproject.toml /src/
RUN pip install $(python /src/requirements.py /src/pyproject.toml serve)
COPY README.md /src/
COPY operator /src/operator
COPY jobs /src/jobs
RUN pip install --no-deps /src && rm -rf /src \
    && python -c "import lmforge.jobs.serve.app"
USER 1000:1000
WORKDIR /home/lmforge
EXPOSE 8000
CMD ["python", "-m", "lmforge.jobs.serve", "--host", "0.0.0.0", "--port", "8000"]
