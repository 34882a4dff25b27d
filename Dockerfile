# pkcs11-supervisor: Node 24 LTS + SoftHSM2 + the daemon.
# Build:  docker build -t pkcs11-supervisor .
# Run:    docker run -p 9464:9464 -v p11-var:/app/var pkcs11-supervisor   (the API socket is /app/var/pkcs11-supervisor.sock)
# Mount your own config at /app/config and token/PIN files at /app/var for real deployments.

FROM node:24-bookworm-slim AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 make g++ \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json ./
COPY src src
COPY actors actors
COPY workers workers
COPY bench bench
RUN npx tsc -p tsconfig.json && npm prune --omit=dev

FROM node:24-bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends softhsm2 opensc openssl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 p11 \
 && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/p11 p11
WORKDIR /app
COPY --from=build /app/node_modules node_modules
COPY --from=build /app/dist dist
COPY package.json ./
COPY config config
COPY scripts scripts
RUN mkdir -p var && chown p11:p11 var \
 && chmod 755 dist/src/cli.js && ln -s /app/dist/src/cli.js /usr/local/bin/pkcs11-supervisor
ENV NODE_ENV=production
USER p11
VOLUME ["/app/config", "/app/var"]
# 9464: metrics and health; 9443: the signing API over mutual TLS, where the config has api.tls.
EXPOSE 9464 9443
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
  CMD ["node", "scripts/healthcheck.mjs"]
# The same entry as `npm start`, minus the package installs the image already has:
# provision the dev token on first run, then the daemon (listening on all interfaces).
ENTRYPOINT ["bash", "scripts/container-entry.sh"]
