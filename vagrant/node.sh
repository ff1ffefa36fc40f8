#!/bin/sh
# Every node: containerd and kubeadm/kubelet, the nodeward image imported
# into containerd's k8s.io namespace, this node's identity and the policies
# under /etc/nodeward (the DaemonSet's hostPaths).
# Usage: node.sh NODE_IP KUBERNETES_MINOR
set -eu
node_ip=$1 minor=$2
export DEBIAN_FRONTEND=noninteractive

swapoff -a
sed -i '/ swap / s/^/#/' /etc/fstab
modprobe br_netfilter
printf 'br_netfilter\n' > /etc/modules-load.d/k8s.conf
cat > /etc/sysctl.d/k8s.conf <<SYSCTL
net.ipv4.ip_forward = 1
net.bridge.bridge-nf-call-iptables = 1
SYSCTL
sysctl --system >/dev/null

apt-get update -q
apt-get install -y -q containerd curl gpg apt-transport-https ca-certificates
mkdir -p /etc/containerd
containerd config default | sed 's/SystemdCgroup = false/SystemdCgroup = true/' > /etc/containerd/config.toml
systemctl restart containerd

mkdir -p /etc/apt/keyrings
curl -fsSL "https://pkgs.k8s.io/core:/stable:/v$minor/deb/Release.key" |
    gpg --dearmor --yes -o /etc/apt/keyrings/kubernetes.gpg
echo "deb [signed-by=/etc/apt/keyrings/kubernetes.gpg] https://pkgs.k8s.io/core:/stable:/v$minor/deb/ /" \
    > /etc/apt/sources.list.d/kubernetes.list
apt-get update -q
apt-get install -y -q kubelet kubeadm kubectl
# The private network's address, not the NAT one every VM shares.
echo "KUBELET_EXTRA_ARGS=--node-ip=$node_ip" > /etc/default/kubelet

ctr -n k8s.io images import /tmp/nodeward.oci.tar

install -d -m 0700 /etc/nodeward/identity
install -m 0600 /tmp/nodeward-identity/* /etc/nodeward/identity/
install -d -m 0755 /etc/nodeward/policies
install -m 0644 /tmp/nodeward-policies/*.yaml /etc/nodeward/policies/
rm -rf /tmp/nodeward-identity /tmp/nodeward-policies /tmp/nodeward.oci.tar
