# lgwan-gateway and lgwan-client in one image, for docker-compose.yml.
#
# No key, password or configuration is baked in: `lgwan-gateway init` creates
# them at run time in named volumes (deploy/compose-init.sh, the `init`
# service). The build context is an allow-list (.dockerignore), so keys/ and
# config/*.toml never even reach the builder. The services log to
# stdout/stderr (`docker compose logs`); the tamper-evident audit log is a file
# in the state volume (`lgwan-gateway audit tail --follow`).

# -- build: the project and its dependencies in a virtual environment (no test extras) ---------
FROM python:3.12-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/lgwan
WORKDIR /src
COPY pyproject.toml README.md ./
COPY envelope/ envelope/
COPY custody/ custody/
COPY client/ client/
COPY gateway/ gateway/
RUN /opt/lgwan/bin/pip install .

# -- run ---------------------------------------------------------------------------------------
FROM python:3.12-slim-bookworm
ENV PATH=/opt/lgwan/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LANG=C.UTF-8
RUN groupadd --gid 10001 lgwan \
    && useradd --uid 10001 --gid 10001 --home-dir /srv --no-create-home \
        --shell /usr/sbin/nologin lgwan
COPY --from=build /opt/lgwan /opt/lgwan
COPY deploy/compose-init.sh /usr/local/bin/lgwan-compose-init
COPY deploy/healthcheck.py /usr/local/bin/lgwan-healthcheck
# Mount points owned by the service user: an empty named volume takes its
# owner and mode from here. keys/ 0700 (private keys are 0600 inside);
# config/ holds gateway.toml, which never holds a secret.
RUN chmod 0755 /usr/local/bin/lgwan-compose-init /usr/local/bin/lgwan-healthcheck \
    && install -d -o lgwan -g lgwan -m 0750 /srv/gateway /srv/print-site /srv/ward \
    && install -d -o lgwan -g lgwan -m 0700 /srv/gateway/keys /srv/print-site/keys \
    && install -d -o lgwan -g lgwan -m 0755 /srv/gateway/config /srv/print-site/config \
        /srv/exchange
WORKDIR /srv
USER 10001:10001
EXPOSE 2222
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["lgwan-healthcheck", "2222"]
CMD ["lgwan-gateway", "serve", "--listen", "0.0.0.0:2222"]
