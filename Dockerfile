# auditwatch stream processor. The broker comes from elsewhere (docker-compose.yml, or any
# Kafka cluster), so none of the local-broker machinery (Java, Maven, jars) is installed.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src

# Dependencies are installed from pyproject.toml alone, before the source is copied, so a
# code change reuses this (slow) layer instead of reinstalling every dependency.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# README.m[d] is a glob so the build still works while the README does not exist yet.
COPY pyproject.toml README.m[d] ./
COPY streams ./streams
COPY schemas ./schemas
COPY detectors ./detectors
# `auditwatch backtest` scores pages with bench.evaluate.
COPY bench ./bench
RUN pip install --no-deps .

# Fixed numeric ids: `USER` by number lets Kubernetes' runAsNonRoot verify the user, and
# gives volume files a stable owner across rebuilds.
RUN groupadd --system --gid 10001 auditwatch \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /var/lib/auditwatch --shell /usr/sbin/nologin auditwatch \
    && mkdir -p /var/lib/auditwatch/state /etc/auditwatch \
    && chown -R 10001:10001 /var/lib/auditwatch

USER 10001:10001
# Not /src: running there would import the source tree instead of the installed package.
WORKDIR /var/lib/auditwatch

# Declared after the chown so a new named volume starts out owned by the service user.
VOLUME ["/var/lib/auditwatch/state"]

# No config is baked in: its bootstrap address is deployment-specific, and a missing file
# fails fast with a clear message rather than retrying against the wrong broker.
ENTRYPOINT ["auditwatch"]
CMD ["run", "--config", "/etc/auditwatch/config.yaml"]
