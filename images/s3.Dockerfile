# A small S3 server for images/compose.yml and the container tests: the s3s-fs binary
# (crates.io, installed on the host by .ci/setup) that images/build-images stages in
# images/dist/. A test fixture, not for production: s3s-fs takes its keys as arguments.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
LABEL org.walkeeper.image=s3
COPY images/dist/s3s-fs /usr/local/bin/s3s-fs
COPY images/s3-entrypoint.sh /usr/local/bin/s3-entrypoint
# S3_ACCESS_KEY and S3_SECRET_KEY must be given at run time.
ENV S3_BUCKET=walkeeper
EXPOSE 9000
ENTRYPOINT ["/usr/local/bin/s3-entrypoint"]
