#!/bin/sh
# The control plane: kubeadm init with the Kubernetes CA made on the host
# (its hash is what workers pin), flannel, the enrolled namespaces, then
# nodeward (deploy/).
# Usage: control-plane.sh NODE_IP
set -eu
node_ip=$1
. /tmp/join.env
export KUBECONFIG=/etc/kubernetes/admin.conf

if [ ! -f "$KUBECONFIG" ]; then
    install -d -m 0700 /etc/kubernetes/pki
    install -m 0600 /tmp/kubernetes-pki/ca.key /tmp/kubernetes-pki/ca.crt /etc/kubernetes/pki/
    kubeadm init --apiserver-advertise-address "$node_ip" \
        --pod-network-cidr 10.244.0.0/16 --token "$TOKEN" --token-ttl 24h
fi
rm -rf /tmp/kubernetes-pki

# flannel, told which interface carries the private network by an address
# on it: the host's end (.1, with libvirt and VirtualBox alike), not this
# node's own, which every node but this one routes the same way.
curl -fsSL https://github.com/flannel-io/flannel/releases/latest/download/kube-flannel.yml |
    sed "s|- --kube-subnet-mgr|- --kube-subnet-mgr\n        - --iface-can-reach=${node_ip%.*}.1|" |
    kubectl apply -f -

kubectl apply -f /tmp/nodeward-deploy/
for ns in shop ops; do
    kubectl create namespace "$ns" --dry-run=client -o yaml | kubectl apply -f -
    kubectl label namespace "$ns" nodeward.io/mesh=enabled --overwrite
done
