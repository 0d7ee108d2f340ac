# etcd 3.4 from Debian's etcd-server package (and etcdctl), for images/compose.yml and the
# container tests. One member; its data in /var/lib/etcd/data.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
LABEL org.walkeeper.image=etcd
RUN set -eux; apt-get update; \
    apt-get install -y --no-install-recommends etcd-server etcd-client tini; \
    rm -rf /var/lib/apt/lists/* /var/cache/apt/*; \
    etcd --version
ENV ETCD_NAME=etcd \
    ETCD_DATA_DIR=/var/lib/etcd/data \
    ETCD_LISTEN_CLIENT_URLS=http://0.0.0.0:2379 \
    ETCD_ADVERTISE_CLIENT_URLS=http://etcd:2379 \
    ETCD_LISTEN_PEER_URLS=http://0.0.0.0:2380 \
    ETCD_INITIAL_ADVERTISE_PEER_URLS=http://etcd:2380 \
    ETCD_INITIAL_CLUSTER=etcd=http://etcd:2380 \
    ETCDCTL_API=3
EXPOSE 2379
ENTRYPOINT ["/usr/bin/tini", "--", "etcd"]
