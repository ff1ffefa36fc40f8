#!/bin/sh
# Runs on the host before `vagrant up` (a trigger in the Vagrantfile).
# Makes, once, what the VMs get copied:
#   STATE/ca/               the mesh's root CA (ca.key never leaves the host)
#   STATE/nodes/<node>/     `nodeward ca issue-node` output, one per node
#   STATE/kubernetes-pki/   the Kubernetes CA kubeadm init adopts
#   STATE/join.env          bootstrap token + that CA's public-key hash, so
#                           workers join without trusting the network
# Usage: host-prepare.sh NODEWARD_BIN IMAGE STATE CONTROL_PLANE_IP NODE...
set -eu
nodeward=$1 image=$2 state=$3 cp_ip=$4
shift 4

if [ ! -f "$image" ] || [ ! -x "$nodeward" ]; then
    echo "missing $image or $nodeward: run \`cargo xtask image\` first" >&2
    exit 1
fi
umask 077
mkdir -p "$state/nodes"

[ -f "$state/ca/ca.key" ] || "$nodeward" ca init --trust-domain cluster.local --out "$state/ca"
for node in "$@"; do
    [ -f "$state/nodes/$node/node.key" ] ||
        "$nodeward" ca issue-node --ca "$state/ca" --node "$node" --out "$state/nodes/$node"
done

pki=$state/kubernetes-pki
if [ ! -f "$pki/ca.key" ]; then
    mkdir -p "$pki"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj /CN=kubernetes \
        -addext basicConstraints=critical,CA:TRUE \
        -addext keyUsage=critical,digitalSignature,keyEncipherment,keyCertSign \
        -keyout "$pki/ca.key" -out "$pki/ca.crt" 2>/dev/null
fi
if [ ! -f "$state/join.env" ]; then
    token="$(openssl rand -hex 3).$(openssl rand -hex 8)"
    hash=$(openssl x509 -pubkey -noout -in "$pki/ca.crt" |
        openssl pkey -pubin -outform der | openssl dgst -sha256 -hex | sed 's/^.* //')
    printf 'CONTROL_PLANE=%s\nTOKEN=%s\nCA_HASH=sha256:%s\n' "$cp_ip" "$token" "$hash" > "$state/join.env"
fi
echo "nodeward host preparation: $state ready (the CA key stays here)"
