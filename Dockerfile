# eventsinkd as a container sidecar: mount Nexus's WAL volume read-only.
#   docker build -t eventsinkd --build-arg UID=$(id -u nexus) .
# BASE_IMAGE: any image with Python >= 3.11 and pip on PATH (e.g. one built locally where
# no registry is reachable).
ARG BASE_IMAGE=python:3.12-slim
FROM ${BASE_IMAGE}

# Match the UID (and GID) that owns Nexus's WAL files, so the WAL is readable.
ARG UID=10001
ARG GID=10001
RUN groupadd --system --gid "${GID}" eventsinkd \
 && useradd --system --uid "${UID}" --gid "${GID}" --home-dir /var/lib/eventsinkd \
      --shell /usr/sbin/nologin eventsinkd \
 && mkdir -p /etc/eventsinkd /var/lib/eventsinkd \
 && chown "${UID}:${GID}" /var/lib/eventsinkd

WORKDIR /src
COPY pyproject.toml README.md ./
COPY eventsinkd ./eventsinkd
# The same install step `make` uses (pip install of this project), without the test extra.
RUN python -m pip install --no-cache-dir . && rm -rf /src

COPY config.example.yaml /etc/eventsinkd/config.example.yaml
USER eventsinkd
WORKDIR /var/lib/eventsinkd
VOLUME ["/var/lib/eventsinkd"]
EXPOSE 9464
# Liveness of the process, asked where the config's admin.listen says (add --ready to
# also require a readable WAL).
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
  CMD ["eventsinkd", "health", "-c", "/etc/eventsinkd/config.yaml"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["eventsinkd"]
CMD ["run", "-c", "/etc/eventsinkd/config.yaml"]
