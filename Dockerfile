# fairprune: the dashboard and the CLI in one image, set up by the same `make` targets as the README.
#
#   docker build -t fairprune .
#   docker run --gpus all -p 8501:8501 -v fairprune-runs:/data fairprune          # dashboard
#   docker run --rm -v "$PWD:/work" fairprune .venv/bin/fairprune audit --demo mnist --out /work/r.json
#
# CUDA: torch's wheels carry the CUDA runtime they were built with (cu130), so a plain Debian base is
# CUDA-capable; the NVIDIA container toolkit mounts the driver when NVIDIA_VISIBLE_DEVICES is set (below)
# and `--gpus` is given. BASE may name any Debian bookworm image with Python 3.11 (e.g. one built by
# debootstrap where Docker Hub cannot be reached); it needs python3, venv and pip.
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}

# Behind a TLS-intercepting proxy whose CA the base trusts: --build-arg PIP_CERT=/etc/ssl/certs/ca-certificates.crt
ARG PIP_CERT
# WITH_BROWSER=1 adds Debian's chromium, so `make test` (browser tests included) runs in the image too.
ARG WITH_BROWSER=0
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    FAIRPRUNE_HOME=/data \
    PYTHON=python3

RUN apt-get update \
 && apt-get install -y --no-install-recommends make ca-certificates python3-venv \
 && if [ "$WITH_BROWSER" = "1" ]; then apt-get install -y --no-install-recommends chromium; fi \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 1000 fairprune \
 && mkdir -p /data /app && chown fairprune:fairprune /data /app

USER fairprune
WORKDIR /app

# The heavy layer first (torch and the rest, exactly requirements*.txt, in the one pip command the
# Makefile uses), so a source change does not reinstall them.
COPY --chown=fairprune:fairprune requirements.txt requirements-dev.txt ./
RUN python3 -m venv .venv \
 && .venv/bin/python -m pip install --quiet --upgrade pip \
 && .venv/bin/python -m pip install --quiet -r requirements.txt -r requirements-dev.txt

# Then the project, installed by the same target `make run` and `make test` depend on.
COPY --chown=fairprune:fairprune . .
RUN make venv

# Runs, uploads and the worker's state live in FAIRPRUNE_HOME: keep it on a volume.
VOLUME ["/data"]
EXPOSE 8501
HEALTHCHECK --interval=30s --timeout=5s --start-period=90s --retries=3 \
  CMD .venv/bin/python -c "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8501/_stcore/health', timeout=4).status != 200)"
CMD ["make", "run"]
