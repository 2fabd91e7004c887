# tsguard service image. CPU by default:
#   docker build -t tsguard .
# CUDA: a CUDA runtime base (it brings no Python; the distro's python3 >= 3.11 is installed) and
# the matching PyTorch wheel index:
#   docker build -t tsguard:cuda \
#     --build-arg BASE_IMAGE=nvidia/cuda:12.6.3-runtime-ubuntu24.04 \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 .
#   docker run --gpus all tsguard:cuda serve --device cuda --bootstrap kafka:9092
# TORCH_INDEX_URL="" takes torch from PyPI (on x86_64 Linux that is a CUDA build).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1

# python:*-slim has Python; CUDA runtime images do not.
RUN if ! command -v python3 > /dev/null 2>&1; then \
        apt-get update \
        && apt-get install -y --no-install-recommends python3 python3-venv \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3 -c 'import sys; assert sys.version_info >= (3, 11), sys.version' \
    && python3 -m venv /opt/tsguard
ENV PATH=/opt/tsguard/bin:$PATH

WORKDIR /src
# torch first, from the index that matches the base image; constraints.txt pins its version.
COPY constraints.txt ./
RUN if [ -n "$TORCH_INDEX_URL" ]; then \
        pip install -c constraints.txt --index-url "$TORCH_INDEX_URL" torch; \
    else \
        pip install -c constraints.txt torch; \
    fi

COPY pyproject.toml README.md ./
COPY detector ./detector
COPY stream ./stream
COPY training ./training
# With the optional librdkafka client: TSGUARD_KAFKA_CLIENT=confluent selects it at run time.
RUN pip install -c constraints.txt '.[confluent]' && rm -rf /src

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin tsguard \
    && mkdir /models && chown tsguard /models
# /models: the model directories of `tsguard promote` (a named volume takes this owner).
USER tsguard
WORKDIR /home/tsguard
# Compile the calibration and episode loops (numba) into the image: a container then loads them
# in well under a second instead of compiling them for a few seconds at every start.
ENV NUMBA_CACHE_DIR=/home/tsguard/.cache/numba
RUN python -c "from stream.heads.metrics import load_kernels; load_kernels()"

EXPOSE 9109
# Liveness: /healthz answers 200 while the pipeline loop turns (any non-2xx makes urlopen raise).
# Orchestrators probe readiness at /readyz (partitions assigned, model loaded, broker answering).
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=5 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9109/healthz', timeout=3)"]

ENTRYPOINT ["tsguard"]
CMD ["serve", "--bootstrap", "kafka:9092", "--metrics-port", "9109"]
