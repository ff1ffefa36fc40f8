#!/bin/sh
# A worker: joins the control plane, pinning its CA by hash. Waits for
# the API server (libvirt brings machines up in parallel).
set -eu
. /tmp/join.env
[ -f /etc/kubernetes/kubelet.conf ] && exit 0
for _ in $(seq 120); do
    curl -ksf "https://$CONTROL_PLANE:6443/readyz" >/dev/null && break
    sleep 5
done
kubeadm join "$CONTROL_PLANE:6443" --token "$TOKEN" --discovery-token-ca-cert-hash "$CA_HASH"
