# syntax=docker/dockerfile:1
# The model repository for the `ngc` target, as an image the chart's init container copies from
# (triton.modelRepository.source: image). It holds two variants:
#   /model-repository/gpu   `aisle export --target ngc` as is: ONNX models on KIND_GPU instances
#                           (TensorRT FP16 too with --build-arg TENSORRT=1)
#   /model-repository/cpu   the same with KIND_CPU instance groups, for Triton without a GPU
# The chart copies gpu/ or cpu/ by triton.gpu.enabled. To fill a PVC or a bucket instead, copy
# the variant out of this image (see helm/aisle/README.md, "Model repository").
#   docker build -f docker/model-repository.Dockerfile -t aisle-model-repository:0.1.0 .
#
# Triton's own Python needs numpy<2 and tokenizers for the Python-backend models: they are in the
# Triton image (docker/triton.Dockerfile), so this repository carries models and files only.

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm
ARG RUNTIME_IMAGE=busybox:1.36.1-musl

# --- export: the aisle package (with its committed weights) writes the repository -----------
FROM ${PYTHON_IMAGE} AS export
ARG TENSORRT=0
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/aisle
ENV PATH=/opt/aisle/bin:$PATH
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
COPY . /src
RUN pip install /src
WORKDIR /work
RUN if [ "$TENSORRT" = 1 ]; then trt=--tensorrt; else trt=; fi \
 && aisle export --target ngc --output /out/gpu $trt \
 && aisle export --target ngc --output /out/cpu \
 && sed -i 's/KIND_GPU/KIND_CPU/' /out/cpu/*/config.pbtxt \
 && ! grep -rq KIND_GPU /out/cpu \
 && test -f /out/gpu/embed_text/config.pbtxt \
 && find /out -name __pycache__ -prune -exec rm -rf {} +

# --- runtime: the files and a shell for `cp` ---------------------------------------------------
FROM ${RUNTIME_IMAGE}
COPY --from=export /out /model-repository
USER 10001:10001
CMD ["ls", "-R", "/model-repository"]
