# sentiloop API service on CPU (one API worker feeding a model process per core).
#   docker build -t sentiloop .
#   docker run --rm -v sentiloop-data:/data sentiloop \
#     sentiloop keys create --name crm --scopes predict,feedback --file /data/api-keys.json
#   docker run -p 3000:3000 -v sentiloop-data:/data \
#     -e SENTILOOP_API_KEYS_FILE=/data/api-keys.json sentiloop
# PostgreSQL: add -e DATABASE_URL=postgresql+psycopg://user:pass@host:5432/db
# A container is reached from other hosts, so API keys are required here
# (without them the service refuses to start and says how to create one).
#
# Build arguments, for machines without a registry or behind a proxy
# (scripts/build_image.sh builds it that way; README, "Deployment"):
#   BASE_IMAGE      any Debian-like image with python3 (3.11+) and its venv module,
#                   e.g. one made locally with debootstrap when no registry answers.
#   TORCH_PIP_ARGS  where pip finds torch's CPU build. PyPI's Linux torch wheel is the
#                   CUDA build (several GB of nvidia-* wheels this image never uses).
#   PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, PIP_CERT: passed to pip as usual (a mirror,
#                   a proxy's CA bundle mounted with `podman build -v`).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
ARG TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_CERT

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    BENTOML_DO_NOT_TRACK=true \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    BENTOML_HOME=/data/bentoml \
    SENTILOOP_HOME=/data \
    SENTILOOP_CACHE_DIR=/opt/sentiloop-cache \
    SENTILOOP_AUTH=required \
    PATH=/opt/venv/bin:$PATH

WORKDIR /app

# A virtual environment: the same steps on python:3.11-slim and on a Debian base,
# whose system Python refuses pip installs (PEP 668).
RUN python3 -m venv /opt/venv
# The CPU build of torch first (`+cpu`, checked), so that the project's pin
# (torch==2.13.0, which 2.13.0+cpu satisfies) does not pull a CUDA build.
RUN pip install $TORCH_PIP_ARGS "torch==2.13.0+cpu" \
    && python -c "import sys, torch; sys.exit(torch.version.cuda is not None)"

COPY pyproject.toml README.md ./
COPY core ./core
COPY model ./model
COPY storage ./storage
COPY service ./service
COPY feedback ./feedback
COPY connectors ./connectors
COPY training ./training
COPY sentiloop ./sentiloop
# The cache is the user's: `prepare` runs as root and writes some weights mode 0600
# (the server as uid 10001 could not read them), and serving a retrained model
# merges its LoRA delta into the cache (model/deltas.py). In the same layer, so the
# cache's 1.5 GB is not stored twice.
RUN pip install ".[s3]" \
    && sentiloop prepare \
    && useradd --create-home --uid 10001 sentiloop \
    && mkdir -p /data \
    && chown -R sentiloop:sentiloop /data /opt/sentiloop-cache

USER sentiloop
VOLUME ["/data"]
EXPOSE 3000

HEALTHCHECK --interval=15s --timeout=5s --start-period=90s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:3000/readyz', timeout=4).status != 200)"

CMD ["sentiloop", "serve", "--host", "0.0.0.0", "--port", "3000"]
