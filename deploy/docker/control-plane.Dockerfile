# The control plane: `edgefleet server` with the server extra, as an unprivileged user.
# Build from the repository root:  docker build -f deploy/docker/control-plane.Dockerfile .
FROM python:3.11-slim

RUN useradd --system --uid 10001 --create-home --home-dir /var/lib/edgefleet --shell /usr/sbin/nologin edgefleet
WORKDIR /src
COPY pyproject.toml README.md ./
COPY edgefleet ./edgefleet
COPY shared ./shared
COPY agent ./agent
COPY control_plane ./control_plane
RUN pip install --no-cache-dir ".[server]" && rm -rf /src

USER edgefleet
WORKDIR /var/lib/edgefleet
# Keys, config, blobs (and the SQLite database, when no database_url is set).
ENV EDGEFLEET_DATA_DIR=/var/lib/edgefleet/data
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/api/v1/healthz', timeout=3).status != 200)"]
ENTRYPOINT ["edgefleet"]
CMD ["server", "--host", "0.0.0.0", "--log-format", "json"]
