# Worker image: the pipeline (preprocess, train, render) with cuda_ext built for the target GPUs.
#   docker build -f deploy/worker.Dockerfile --build-arg VARIANT=cuda -t synctalk-worker .
#   docker build -f deploy/worker.Dockerfile --build-arg VARIANT=cpu  -t synctalk-worker:cpu .
# The cuda variant also builds tiny-cuda-nn's torch bindings (TINYCUDANN=0 skips it): the `standard`
# profile's grids use its table layout and run through it where it imports (docs/KERNELS.md).
# Its build needs GitHub; where it fails, the image still builds and cuda_ext's grids are used.
ARG VARIANT=cuda
FROM nvidia/cuda:13.0.0-devel-ubuntu24.04 AS base-cuda
FROM python:3.11-slim AS base-cpu
FROM base-${VARIANT}

ARG VARIANT
ARG TORCH_CUDA_ARCH_LIST="8.0;8.6;8.9;9.0"
ARG TINYCUDANN=1
# the commit whose grid layout cuda_ext's `tcnn` layout was written against (include/.../grid.h)
ARG TINYCUDANN_REF=03a659da57f82271c8b3f86ae4a055af048cf0e9
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 \
    TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST} SYNCTALK_MODEL_DIR=/models
RUN apt-get update && apt-get install -y --no-install-recommends \
        python3 python3-venv python3-dev g++ make git ffmpeg espeak-ng \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY requirements.lock pyproject.toml README.md ./
RUN python3 -m venv /venv && /venv/bin/pip install -c requirements.lock -r requirements.lock
COPY . .
RUN /venv/bin/pip install --no-deps -e . \
    && if [ "$VARIANT" = "cuda" ]; then CUDA_HOME=/usr/local/cuda /venv/bin/python -m cuda_ext.build --cuda; \
       else /venv/bin/python -m cuda_ext.build --cpu; fi \
    && /venv/bin/synctalk models fetch
RUN if [ "$VARIANT" = "cuda" ] && [ "$TINYCUDANN" = "1" ]; then \
        TCNN_CUDA_ARCHITECTURES="$(echo "$TORCH_CUDA_ARCH_LIST" | tr -d . )" CUDA_HOME=/usr/local/cuda \
        /venv/bin/pip install --no-build-isolation \
          "git+https://github.com/NVlabs/tiny-cuda-nn@${TINYCUDANN_REF}#subdirectory=bindings/torch" \
        || echo "WARNING: tinycudann did not build; the grids will run on cuda_ext's kernels"; \
    fi
ENV PATH=/venv/bin:$PATH
CMD ["synctalk", "--help"]
