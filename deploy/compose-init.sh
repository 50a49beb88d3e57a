#!/bin/sh
# lgwan-compose-init: the one-shot `init` service of docker-compose.yml.
#
# Creates both sites once, into their named volumes, and links them:
#   $LGWAN_SITES/gateway     the LGWAN-ASP gateway (drop service + forwarder)
#   $LGWAN_SITES/print-site  the print site (forward destination)
# Each site is `lgwan-gateway init --root SITE` (state.db, storage/, spool/,
# work/, audit/, keys/), then:
#   - the gateway gets a forwarding key pair (keys/forward_ed25519) and
#     [server] public_address, so credential notices and client configs name
#     the address wards reach it at;
#   - the print site gets a key-only `relay` account for that key, allowed
#     only from the gateway's fixed address, and forwards into its own spool;
#   - the gateway forwards the tenant over SFTP to the print site, its host
#     key and receipt key pinned.
# Last, each site's gateway.toml moves into SITE/config/ (its own volume):
# that file is the mark of a finished site. The long-running services mount
# keys/ and config/ read-only; only this service writes them.
#
# Idempotent: when both sites are finished it changes nothing and exits 0.
# A half-finished set-up is refused (exit 1): nothing is ever overwritten.
# Holds no secret; a forwarder account has no password.
set -eu

SITES="${LGWAN_SITES:-/srv}"
TENANT="${LGWAN_TENANT:-shinjuku}"
GATEWAY_ADDRESS="${LGWAN_GATEWAY_ADDRESS:-gateway:2222}"
PRINT_SITE_ADDRESS="${LGWAN_PRINT_SITE_ADDRESS:-print-site:2222}"
RELAY_ALLOW="${LGWAN_RELAY_ALLOW:-172.29.58.10/32}"
RELAY_USER=relay

GATEWAY="$SITES/gateway"
PRINT_SITE="$SITES/print-site"
PROG=lgwan-compose-init
RESET_HINT="remove the volumes and start again: docker compose down -v && docker compose up -d"

say() { printf '%s: %s\n' "$PROG" "$*"; }

fail() {
    printf '%s: error: %s\n' "$PROG" "$1" >&2
    if [ $# -gt 1 ]; then printf 'hint: %s\n' "$2" >&2; fi
    exit 1
}

finished() { [ -f "$1/config/gateway.toml" ]; }

# Replace one `key = value` line that init wrote at its default; refuse if it is not there.
set_value() { # FILE KEY OLD NEW
    grep -qx "$2 = $3" "$1" || fail "$1: no '$2 = $3' line to replace"
    sed -i "s|^$2 = $3\$|$2 = $4|" "$1"
}

# The public key's type and base64 (without the comment), as gateway.toml pins it.
public_key() { cut -d ' ' -f 1,2 "$1"; }

# gateway.toml into SITE/config/: copy beside, rename in place (atomic), remove the original.
commit() { # SITE
    mkdir -p "$1/config"
    cp "$1/gateway.toml" "$1/config/gateway.toml.new"
    chmod 0644 "$1/config/gateway.toml.new"
    mv "$1/config/gateway.toml.new" "$1/config/gateway.toml"
    rm "$1/gateway.toml"
}

if finished "$GATEWAY" && finished "$PRINT_SITE"; then
    say "both sites are already initialised; nothing changed"
    exit 0
fi
for site in "$GATEWAY" "$PRINT_SITE"; do
    if finished "$site"; then
        fail "$site is initialised but the other site is not" "$RESET_HINT"
    fi
    if [ -e "$site/gateway.toml" ] || [ -e "$site/state.db" ]; then
        fail "a previous set-up of $site did not finish" "$RESET_HINT"
    fi
done

say "initialising the gateway in $GATEWAY"
lgwan-gateway init --root "$GATEWAY"
lgwan-client keygen --out "$GATEWAY/keys/forward_ed25519"
set_value "$GATEWAY/gateway.toml" public_address '""' "\"$GATEWAY_ADDRESS\""

say "initialising the print site in $PRINT_SITE"
lgwan-gateway init --root "$PRINT_SITE"
lgwan-gateway --config "$PRINT_SITE/gateway.toml" user add "$RELAY_USER" \
    --role forwarder --tenant "$TENANT" \
    --pubkey "$GATEWAY/keys/forward_ed25519.pub" --allow "$RELAY_ALLOW"
cat >>"$PRINT_SITE/gateway.toml" <<TOML

[tenants.$TENANT]
# Batches the gateway relays here land in this print site's spool.
forward = "file://$PRINT_SITE/spool"
TOML

cat >>"$GATEWAY/gateway.toml" <<TOML

[tenants.$TENANT]
# Forwarded over SFTP to the print site (key only), its keys pinned.
forward = "sftp://$RELAY_USER@$PRINT_SITE_ADDRESS/inbox"
forward_key = "keys/forward_ed25519"
host_key = "$(public_key "$PRINT_SITE/keys/ssh_host_ed25519_key.pub")"
receipt_key = "$(public_key "$PRINT_SITE/keys/gateway_signing_ed25519.pub")"
TOML

# Both configurations must load (every key, route and key file checked) before they count.
lgwan-gateway --config "$PRINT_SITE/gateway.toml" user list >/dev/null
lgwan-gateway --config "$GATEWAY/gateway.toml" user list >/dev/null
commit "$PRINT_SITE"
commit "$GATEWAY"
say "done: tenant $TENANT forwards from $GATEWAY_ADDRESS to $RELAY_USER@$PRINT_SITE_ADDRESS"
