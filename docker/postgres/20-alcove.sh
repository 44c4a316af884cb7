#!/bin/sh
# Runs once, when the postgres service initialises its empty data volume (the image runs every
# script in /docker-entrypoint-initdb.d/): Alcove's own role and database next to Synapse's.
# Synapse's database (POSTGRES_DB) is created by the image with the C collation Synapse needs
# (POSTGRES_INITDB_ARGS in compose.yaml).
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -v alcove_password="$ALCOVE_DB_PASSWORD" <<'SQL'
CREATE ROLE alcove LOGIN PASSWORD :'alcove_password';
CREATE DATABASE alcove OWNER alcove;
SQL
