# The device agent alone: the base install (onnxruntime, numpy, paho-mqtt, cryptography,
# pydantic, httpx, typer, rich), no scikit-learn, FastAPI or SQLModel.
# Build from the repository root:  docker build -f deploy/docker/agent.Dockerfile .
FROM python:3.11-slim

RUN useradd --system --uid 10001 --create-home --home-dir /var/lib/edgefleet-agent --shell /usr/sbin/nologin edgefleet
WORKDIR /src
COPY pyproject.toml README.md ./
COPY edgefleet ./edgefleet
COPY shared ./shared
COPY agent ./agent
RUN pip install --no-cache-dir . && rm -rf /src

USER edgefleet
WORKDIR /var/lib/edgefleet-agent
# The config (`edgefleet agent --print-config`) and the trust store are mounted here.
VOLUME ["/etc/edgefleet", "/var/lib/edgefleet-agent"]
ENTRYPOINT ["edgefleet"]
CMD ["agent", "--config", "/etc/edgefleet/agent.toml"]
