# syntax=docker/dockerfile:1.7
# sampleforge images, two targets:
#   docker build --target operator -t sampleforge-operator .   # kopf operator: no torch, ~150 MB
#   docker build --target job      -t sampleforge-job .        # GPU workloads: torch, transformers, accelerate
#   docker build --target job-vllm -t sampleforge-job-vllm .   # the job image plus vLLM (engine: vllm)
#
# operator and job install exactly the versions of constraints.txt (the project's lock) with uv, the
# same installer and version the development environment uses (hack/bootstrap.sh). job-vllm installs
# those of constraints-vllm.txt: the same lock except torch, its CUDA wheels, triton, transformers and
# numpy, which vLLM pins (vllm 0.33.0 needs torch==2.14.0, transformers<5.21, numpy<2.4; the lock has
# 2.15.0, 5.24.0, 2.4.6), so only runs that use vLLM get its stack; hack/lock_vllm.sh remakes it. Dependencies are
# installed in a layer of their own before the source is copied, so a code change rebuilds only
# the last small layer. tests/unit/test_dockerfile.py and tests/integration/test_chart.py check this
# file: it parses, every COPY source exists, and the operator's install commands work.

ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm
# torch's cu13 wheels bring their own CUDA libraries (cuBLAS, cuDNN, NCCL from PyPI); the image
# only needs the CUDA base layer (driver compatibility, NVIDIA_* variables for the container toolkit).
ARG CUDA_IMAGE=nvidia/cuda:13.0.0-base-ubuntu24.04
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.9

FROM ${UV_IMAGE} AS uv

# ---------------------------------------------------------------------------------------------
# operator: slim Python, only the "operator" extra.
FROM ${PYTHON_IMAGE} AS operator-build
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_NO_CACHE=1 UV_PYTHON_DOWNLOADS=never
WORKDIR /src
RUN python -m venv /opt/venv
COPY pyproject.toml constraints.txt ./
RUN uv pip install --python /opt/venv/bin/python -c constraints.txt -r pyproject.toml --extra operator
COPY README.md ./
COPY api ./api
COPY operator ./operator
COPY jobs ./jobs
COPY testbed ./testbed
COPY cli ./cli
RUN uv pip install --python /opt/venv/bin/python -c constraints.txt --no-deps .

FROM ${PYTHON_IMAGE} AS operator
LABEL org.opencontainers.image.title="sampleforge-operator" \
      org.opencontainers.image.description="kopf operator for AugmentationRun and FineTuneRun" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=operator-build /opt/venv /opt/venv
# Bytecode was compiled at build time; nothing is written at run time outside /tmp, so the
# container runs with readOnlyRootFilesystem (the chart mounts an emptyDir on /tmp).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["sampleforge-operator"]

# ---------------------------------------------------------------------------------------------
# job: CUDA base, a uv-managed CPython 3.11.7 (the version constraints.txt was resolved for),
# and the "jobs" extra.
FROM ${CUDA_IMAGE} AS job-build
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_NO_CACHE=1 UV_PYTHON_INSTALL_DIR=/opt/python
WORKDIR /src
RUN uv python install 3.11.7 && uv venv --python 3.11.7 /opt/venv
COPY pyproject.toml constraints.txt ./
RUN uv pip install --python /opt/venv/bin/python -c constraints.txt -r pyproject.toml --extra jobs
COPY README.md ./
COPY api ./api
COPY operator ./operator
COPY jobs ./jobs
COPY testbed ./testbed
COPY cli ./cli
RUN uv pip install --python /opt/venv/bin/python -c constraints.txt --no-deps .

FROM ${CUDA_IMAGE} AS job
LABEL org.opencontainers.image.title="sampleforge-job" \
      org.opencontainers.image.description="sampleforge AugmentationRun and FineTuneRun workloads (CUDA)" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=job-build /opt/python /opt/python
COPY --from=job-build /opt/venv /opt/venv
# Pods run as non-root (the operator's pod securityContext says runAsNonRoot); downloads and
# caches go to the pod's /cache volume or /tmp, never into the image.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    HF_HOME=/tmp/huggingface \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 1000:1000
ENTRYPOINT ["sampleforge-job"]

# ---------------------------------------------------------------------------------------------
# job-vllm: the job image plus vLLM's offline engine, for augmenters with engine: vllm (they need a
# GPU: resources.gpus >= 1). Runs name it in spec.image. Built like job, from constraints-vllm.txt.
FROM ${CUDA_IMAGE} AS job-vllm-build
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_NO_CACHE=1 UV_PYTHON_INSTALL_DIR=/opt/python
WORKDIR /src
RUN uv python install 3.11.7 && uv venv --python 3.11.7 /opt/venv
COPY pyproject.toml constraints-vllm.txt ./
RUN uv pip install --python /opt/venv/bin/python -c constraints-vllm.txt -r pyproject.toml --extra jobs vllm
COPY README.md ./
COPY api ./api
COPY operator ./operator
COPY jobs ./jobs
COPY testbed ./testbed
COPY cli ./cli
RUN uv pip install --python /opt/venv/bin/python -c constraints-vllm.txt --no-deps .

FROM ${CUDA_IMAGE} AS job-vllm
LABEL org.opencontainers.image.title="sampleforge-job-vllm" \
      org.opencontainers.image.description="sampleforge workloads with vLLM's offline engine (CUDA)" \
      org.opencontainers.image.licenses="Apache-2.0"
# Triton (under vLLM and torch.compile) builds a small C launcher at run time: it needs a C compiler.
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
COPY --from=job-vllm-build /opt/python /opt/python
COPY --from=job-vllm-build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    HF_HOME=/tmp/huggingface \
    VLLM_NO_USAGE_STATS=1 \
    DO_NOT_TRACK=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 1000:1000
ENTRYPOINT ["sampleforge-job"]
