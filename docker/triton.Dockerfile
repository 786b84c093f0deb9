# syntax=docker/dockerfile:1
# NVIDIA's Triton with what the aisle repository's Python-backend models (tokenizer,
# post-processing) import in Triton's own Python: numpy<2 (numpy 2 in the Python-backend stub
# corrupts TYPE_STRING tensors) and tokenizers. The stock image lacks tokenizers, so its
# tokenizer model fails to load. The chart's default triton.image is this image.
#   docker build -f docker/triton.Dockerfile -t aisle-triton:24.10-py3 docker/
#
# TOKENIZERS_VERSION: keep it the version the repository's tokenizer.json was written with (the
# app's `tokenizers`); an older library may not read a newer tokenizer.json.

ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:24.10-py3

FROM ${TRITON_IMAGE}
ARG NUMPY_VERSION=1.26.4
ARG TOKENIZERS_VERSION=0.23.3
RUN python3 -m pip install --no-cache-dir "numpy==${NUMPY_VERSION}" "tokenizers==${TOKENIZERS_VERSION}" \
 && python3 -c "import numpy, tokenizers; assert numpy.__version__.startswith('1.'), numpy.__version__"
# triton-server (uid 1000) is the unprivileged user NVIDIA's image ships.
USER 1000:1000
