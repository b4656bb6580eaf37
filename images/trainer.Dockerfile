# syntax=docker/dockerfile:1
# The job image: data, training and evaluation pods run `python -m lmforge.jobs.*` and torchrun.
# torch comes from PyPI: its Linux wheels carry the CUDA runtime libraries (nvidia-* packages),
# so the GPU driver from the node (NVIDIA container toolkit) is all it needs, and the same image
# runs on CPU nodes. From the repository root:
#   docker build -f images/trainer.Dockerfile -t ghcr.io/lmforge/lmforge-trainer:0.1.0 .
#   docker build -f images/trainer.Dockerfile --build-arg EXTRAS=local,ray ...   # engine: ray
ARG PYTHON=3.11
FROM python:${PYTHON}-slim-bookworm AS build
ARG EXTRAS=local
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator operator
COPY jobs jobs
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[${EXTRAS}]"

FROM python:${PYTHON}-slim-bookworm
ARG EXTRAS=local
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/home/lmforge
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels "lmforge[${EXTRAS}]" \
    && rm -rf /wheels \
    && useradd --uid 1000 --create-home --home-dir /home/lmforge lmforge \
    && python -c "import torch, lmforge.jobs.train, lmforge.jobs.data.job"
USER 1000:1000
WORKDIR /home/lmforge
# The operator sets each pod's command (torchrun, the data or evaluation job).
CMD ["python", "-m", "lmforge.jobs.train", "--help"]
