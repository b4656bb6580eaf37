# The job image: data, training and evaluation pods run `python -m lmforge.jobs.*` and torchrun.
# torch comes from PyPI: its Linux wheels carry the CUDA runtime libraries (nvidia-* packages),
# so the GPU driver from the node (NVIDIA container toolkit) is all it needs, and the same image
# runs on CPU nodes. From the repository root (images/README.md; images/build.sh builds all):
#   docker build -f images/trainer.Dockerfile -t ghcr.io/lmforge/lmforge-trainer:0.1.0 .
# It has Ray (the ray extra), so a Dataset with engine: ray runs on it: its head, workers and
# driver (render/dataset.py). EXTRAS=local leaves Ray out.
# BASE is any image with Python 3.11 as `python` and `pip` on the PATH.
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 HOME=/home/lmforge
# Layers from the slowest-changing to the fastest: torch (the same layer as the serve image's
# when TORCH_INDEX is the same), the pinned dependencies, then lmforge itself.
ARG TORCH=torch==2.15.0
ARG TORCH_INDEX=https://pypi.org/simple
RUN pip install --index-url "${TORCH_INDEX}" "${TORCH}" \
    && useradd --uid 1000 --create-home --home-dir /home/lmforge lmforge
ARG EXTRAS=local,ray
COPY images/requirements.py pyproject.toml /src/
RUN pip install $(python /src/requirements.py /src/pyproject.toml "${EXTRAS}")
COPY README.md /src/
COPY operator /src/operator
COPY jobs /src/jobs
RUN pip install --no-deps /src && rm -rf /src \
    && python -c "import torch, ray.data, lmforge.jobs.train, lmforge.jobs.data.job"
USER 1000:1000
WORKDIR /home/lmforge
# The operator sets each pod's command (torchrun, the data or evaluation job).
CMD ["python", "-m", "lmforge.jobs.train", "--help"]
