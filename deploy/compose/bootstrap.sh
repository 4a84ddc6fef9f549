#!/usr/bin/env bash
# One-time set-up of the compose reference stack's secrets (run from anywhere):
#
#   deploy/compose/bootstrap.sh          create missing secrets, init/unseal OpenBao, AppRole
#   deploy/compose/bootstrap.sh unseal   unseal OpenBao again after it restarted
#
# Writes deploy/compose/secrets/ (git- and docker-ignored): admin_token, gateway.agekey,
# clients.env.age (CLIENT_API_KEY=…, encrypted to the gateway's age identity),
# vault_role_id, vault_secret_id, and openbao-init.json (unseal key + root token: move it
# somewhere safe). Needs docker compose, age, age-keygen and openssl on the host.
set -euo pipefail
cd "$(dirname "$0")/../.."
dir=deploy/compose/secrets
mkdir -p "$dir"
umask 077
compose() { docker compose "$@"; }
# The root token goes to `docker compose exec` for the set-up commands only; the services
# themselves never get a secret through their environment.
bao() { compose exec -T -e BAO_ADDR=http://127.0.0.1:8200 ${BAO_TOKEN_VALUE:+-e BAO_TOKEN="$BAO_TOKEN_VALUE"} openbao bao "$@"; }

unseal() {
    local key
    key=$(tr -d '\n' < "$dir/openbao-init.json" | sed -n 's/.*"unseal_keys_b64": *\[ *"\([^"]*\)".*/\1/p')
    bao operator unseal "$key" >/dev/null
}

compose up -d openbao
for _ in $(seq 1 60); do
    rc=0; bao status >/dev/null 2>&1 || rc=$?
    [[ $rc == 0 || $rc == 2 ]] && break        # 2 = sealed (or not initialised): reachable
    sleep 1
done

if [[ "${1:-}" == unseal ]]; then unseal; echo "OpenBao unsealed"; exit 0; fi

[[ -s $dir/admin_token ]] || openssl rand -hex 32 > "$dir/admin_token"
[[ -s $dir/gateway.agekey ]] || age-keygen -o "$dir/gateway.agekey" 2>/dev/null
if [[ ! -s $dir/clients.env.age ]]; then
    client_key=$(openssl rand -hex 24)
    printf 'CLIENT_API_KEY=%s\n' "$client_key" | age -r "$(age-keygen -y "$dir/gateway.agekey")" -o "$dir/clients.env.age"
    echo "client API key for the inference route (x-api-key): $client_key"
fi

if [[ ! -s $dir/openbao-init.json ]]; then
    bao operator init -key-shares=1 -key-threshold=1 -format=json > "$dir/openbao-init.json"
fi
unseal
BAO_TOKEN_VALUE=$(tr -d '\n' < "$dir/openbao-init.json" | sed -n 's/.*"root_token": *"\([^"]*\)".*/\1/p')
export BAO_TOKEN_VALUE

bao secrets list | grep -q '^secret/' || bao secrets enable -path=secret kv-v2
bao auth list | grep -q '^approle/' || bao auth enable approle
printf 'path "secret/data/*" { capabilities = ["read"] }\npath "secret/metadata/*" { capabilities = ["read"] }\n' \
    | bao policy write warden-read -
bao write auth/approle/role/warden token_policies=warden-read token_ttl=1h token_max_ttl=4h >/dev/null
bao read -field=role_id auth/approle/role/warden/role-id > "$dir/vault_role_id"
[[ -s $dir/vault_secret_id ]] || bao write -f -field=secret_id auth/approle/role/warden/secret-id > "$dir/vault_secret_id"

# Upstream credentials Warden injects (replace with the real ones).
bao kv get -mount=secret sophia/api >/dev/null 2>&1 \
    || bao kv put -mount=secret sophia/api service_token="$(openssl rand -hex 24)" >/dev/null
bao kv get -mount=secret ml/inference >/dev/null 2>&1 \
    || bao kv put -mount=secret ml/inference api_key="$(openssl rand -hex 24)" >/dev/null

# Compose bind-mounts file secrets with their host owner and mode; the gateway runs as 65532.
for f in admin_token gateway.agekey clients.env.age vault_role_id vault_secret_id; do
    chmod 0400 "$dir/$f"
    if [[ $(id -u) == 0 ]]; then chown 65532:65532 "$dir/$f"; fi
done
[[ $(id -u) == 0 ]] || echo "now run: sudo chown 65532:65532 $dir/{admin_token,gateway.agekey,clients.env.age,vault_role_id,vault_secret_id}"
echo "done: docker compose up -d --build"
