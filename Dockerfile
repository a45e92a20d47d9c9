# The sluice image: the static binary and the CA roots, nothing else, no
# base image to pull. Build it with `make image`, which stages the build
# context in bin/image (the binary, the build host's
# /etc/ssl/certs/ca-certificates.crt, /etc/passwd and /etc/group naming
# the non-root user) and passes the labels' values.
#
# The image runs as that non-root user (65532, "sluice"): enough for
# `sluice proxy`, `sluice policy check`, `sluice ca export` and the other
# tools. The agent needs root: the DaemonSet sets runAsUser: 0.
FROM scratch
ARG VERSION=dev
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="sluice" \
      org.opencontainers.image.description="Transparent egress interceptor: eBPF agent, TLS proxy and policy in one static binary" \
      org.opencontainers.image.source="https://github.com/sluicehq/sluice" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}"
COPY rootfs/ /
# HOME and the default CA directory, writable by the user; /tmp for
# anything that needs a temporary file.
COPY --chown=65532:65532 home/ /home/sluice/
COPY --chown=65532:65532 home/ /var/lib/sluice/
ENV HOME=/home/sluice \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/sluice"]
CMD ["--help"]
