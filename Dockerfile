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
# Every dependency from the hashed lock (make lock): pinned, hash-checked, nothing resolved. torch is not
# in it: it comes next from TORCH_INDEX, pinned to TORCH_VERSION (the version of requirements/dev.lock);
# its dependencies are already there from the lock, so the CPU build fetches torch alone (a CUDA build
# adds its nvidia-* packages from that index).
COPY requirements/image.lock requirements/nodeps.lock ./requirements/
RUN pip install --require-hashes --no-deps -r requirements/image.lock -r requirements/nodeps.lock \
    && pip install --index-url ${TORCH_INDEX} torch==${TORCH_VERSION}
COPY pyproject.toml README.md ./
COPY connector ./connector
COPY ml_backend ./ml_backend
COPY sync ./sync
# the command line only: the local stack (hitl/local) and the simulator (hitl/simulate) are dev tooling
COPY hitl/__init__.py hitl/__main__.py hitl/cli.py hitl/preflight.py ./hitl/
# the package alone: no dependency resolved, no build backend fetched (setuptools is in the lock)
RUN pip install --no-deps --no-build-isolation . \
    && useradd --create-home --uid 1000 hitl && mkdir -p /app/var/models && chown -R hitl /app/var
USER hitl
EXPOSE 9090 9091
CMD ["hitl", "serve"]
