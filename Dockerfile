# sentiloop API service on CPU (one API worker feeding a model process per core).
#   docker build -t sentiloop .
#   docker run --rm -v sentiloop-data:/data sentiloop \
#     sentiloop keys create --name crm --scopes predict,feedback --file /data/api-keys.json
#   docker run -p 3000:3000 -v sentiloop-data:/data \
#     -e SENTILOOP_API_KEYS_FILE=/data/api-keys.json sentiloop
# PostgreSQL: add -e DATABASE_URL=postgresql+psycopg://user:pass@host:5432/db
# A container is reached from other hosts, so API keys are required here
# (without them the service refuses to start and says how to create one).
FROM python:3.11-slim

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
    SENTILOOP_AUTH=required

WORKDIR /app

# The CPU build of torch first, so that the project's pin does not pull a CUDA build.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0

COPY pyproject.toml README.md ./
COPY core ./core
COPY model ./model
COPY storage ./storage
COPY service ./service
COPY feedback ./feedback
COPY training ./training
COPY sentiloop ./sentiloop
RUN pip install . \
    && sentiloop prepare \
    && useradd --create-home --uid 10001 sentiloop \
    && mkdir -p /data \
    && chown sentiloop /data

USER sentiloop
VOLUME ["/data"]
EXPOSE 3000

HEALTHCHECK --interval=15s --timeout=5s --start-period=90s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:3000/readyz', timeout=4).status != 200)"

CMD ["sentiloop", "serve", "--host", "0.0.0.0", "--port", "3000"]
