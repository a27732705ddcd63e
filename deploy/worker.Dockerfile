# Worker image: the pipeline (preprocess, train, render) with cuda_ext built for the target GPUs.
#   docker build -f deploy/worker.Dockerfile --build-arg VARIANT=cuda -t synctalk-worker .
#   docker build -f deploy/worker.Dockerfile --build-arg VARIANT=cpu  -t synctalk-worker:cpu .
ARG VARIANT=cuda
FROM nvidia/cuda:13.0.0-devel-ubuntu24.04 AS base-cuda
FROM python:3.11-slim AS base-cpu
FROM base-${VARIANT}

ARG VARIANT
ARG TORCH_CUDA_ARCH_LIST="8.0;8.6;8.9;9.0"
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 \
    TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST} SYNCTALK_MODEL_DIR=/models
RUN apt-get update && apt-get install -y --no-install-recommends \
        python3 python3-venv python3-dev g++ make ffmpeg espeak-ng \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY requirements.lock pyproject.toml README.md ./
RUN python3 -m venv /venv && /venv/bin/pip install -c requirements.lock -r requirements.lock
COPY . .
RUN /venv/bin/pip install --no-deps -e . \
    && if [ "$VARIANT" = "cuda" ]; then CUDA_HOME=/usr/local/cuda /venv/bin/python -m cuda_ext.build --cuda; \
       else /venv/bin/python -m cuda_ext.build --cpu; fi \
    && /venv/bin/synctalk models fetch
ENV PATH=/venv/bin:$PATH
CMD ["synctalk", "--help"]
