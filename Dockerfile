# smallwebrtc-host with its demo bot (README, Deploying: In a container).
#   docker build -t smallwebrtc-host .
#   docker compose up --build       # compose.yaml: the same image, its ports and settings
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# What the package is built from: pyproject.toml reads README.md, and the
# package's defaults file (engine/common/host.toml) is a link to config/host.toml.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY config/ config/
COPY engine/ engine/
COPY workers/ workers/
COPY transport/ transport/
RUN pip install /src

# Not root, and not in the sources' directory: the host runs from anywhere it is installed.
RUN useradd --create-home --uid 10001 smallwebrtc
USER smallwebrtc
WORKDIR /home/smallwebrtc

# ENV: bots made by `pipecat init` leave out what only a deployment has (Krisp)
# when it is "local", which serve sets when it is unset, as Pipecat's runner does.
# The bot: a derived image copies its own in and sets SMALLWEBRTC_HOST_BOT.
# ICE uses only the UDP ports of ice_udp_port_range, published 1:1 (compose.yaml).
ENV ENV=production \
    SMALLWEBRTC_HOST_PORT=7860 \
    SMALLWEBRTC_HOST_BOT=workers.demo_bot:bot \
    SMALLWEBRTC_HOST_ICE_UDP_PORT_RANGE=40000-40099
EXPOSE 7860/tcp 40000-40099/udp

HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ['SMALLWEBRTC_HOST_PORT'], timeout=2)"

# SIGTERM drains (README, Deploying); the server listens beyond the container's loopback.
CMD ["smallwebrtc-host", "serve", "--host", "0.0.0.0"]
