# syntax=docker/dockerfile:1
# The aisle application image. One image for every aisle process in the chart:
#   gateway     aisle serve --address 0.0.0.0:50051 --metrics-port 9100   (the default command)
#   workers     aisle worker --queues triton --concurrency 4 --metrics-port 9101
#   beat        aisle beat
#   migrations  aisle db migrate
#   refresh     aisle refresh all
# Build from the repository root (docker/app.Dockerfile.dockerignore limits the context):
#   docker build -f docker/app.Dockerfile -t aisle:0.1.0 .

# Pinned to an exact patch release and Debian release; add @sha256:<digest> to pin the bytes.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

# --- build: compilers are here only, for any dependency without a wheel ----------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/aisle
ENV PATH=/opt/aisle/bin:$PATH
# The CPU torch wheel first, from PyTorch's CPU index: PyPI's torch pulls GBs of CUDA libraries.
# `pip install .` then finds torch==2.13.0 satisfied by 2.13.0+cpu.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
COPY . /src
RUN pip install /src \
 && python -c "import torch; assert torch.version.cuda is None, 'CUDA torch in the image'" \
 && aisle --help > /dev/null

# --- runtime: the interpreter and the virtual environment, nothing else ----------------------
FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 aisle \
 && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin aisle
COPY --from=build /opt/aisle /opt/aisle
# The app writes only to /tmp (an emptyDir under a read-only root filesystem).
ENV PATH=/opt/aisle/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    AISLE_RUN_DIR=/tmp/aisle \
    AISLE_LOG_FORMAT=json
WORKDIR /tmp
USER 10001:10001
EXPOSE 50051 9100 9101
ENTRYPOINT ["aisle"]
CMD ["serve", "--address", "0.0.0.0:50051", "--metrics-port", "9100"]
