#!/bin/sh
# Creates the bucket's directory, then serves /data as S3 on port 9000 (run with --init).
set -eu
: "${S3_ACCESS_KEY:?set S3_ACCESS_KEY}" "${S3_SECRET_KEY:?set S3_SECRET_KEY}"
mkdir -p "/data/$S3_BUCKET"
exec s3s-fs --host 0.0.0.0 --port 9000 --access-key "$S3_ACCESS_KEY" --secret-key "$S3_SECRET_KEY" /data
