# OpenBao for the compose reference stack: file storage on the `openbao-data` volume,
# plain HTTP on the internal `vault` network only (no port is published).
# Initialised and unsealed by deploy/compose/bootstrap.sh.
storage "file" {
  path = "/openbao/file"
}

listener "tcp" {
  address     = "0.0.0.0:8200"
  tls_disable = true
}

# The container runs with cap_drop: ALL, so no IPC_LOCK for mlock.
disable_mlock = true
ui            = false
