#!/bin/sh
# The compose file's one-shot `setup` service (Alcove's image, as root), before Synapse starts:
# - writes Alcove's two appservice registrations into the `registration` volume once (Synapse
#   and Alcove mount it at /registration); later runs keep them, tokens included;
# - hands that volume and Synapse's data volume to uid/gid 10001, the image's `alcove` user, as
#   which Alcove runs and Synapse is started (UID/GID in compose.yaml): the registrations hold
#   the tokens and are written readable by their owner only.
set -eu
config=/config/alcove/config.yaml
if [ ! -f /registration/registration.yaml ]; then
  alcove generate-registration -c "$config"
else
  echo "Keeping the existing registrations in /registration."
fi
# Not left empty: Docker copies an image's directory (and its owner, root for Synapse's /data)
# into an empty named volume when a container mounts it.
mkdir -p /synapse-data/media_store
chown -R 10001:10001 /registration /synapse-data
