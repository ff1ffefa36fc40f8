#!/bin/sh
# The smoke check, on the control plane once every node is up:
#   vagrant provision nw-cp --provision-with smoke
# A frontend on each worker GETs /api/items from the backend on the other
# worker (allowed), and /admin/ (denied by policies/shop.yaml: 403 from
# nodeward, since the backend itself would serve it).
set -eu
export KUBECONFIG=/etc/kubernetes/admin.conf
kubectl -n nodeward-system rollout status daemonset/nodeward --timeout 10m
kubectl apply -f /tmp/smoke.yaml
kubectl -n shop wait --for condition=Ready pod --all --timeout 10m

ip() { kubectl -n shop get pod "$1" -o jsonpath='{.status.podIP}'; }
fail=0
for pair in "frontend-w1 backend-w2" "frontend-w2 backend-w1"; do
    set -- $pair
    target=$(ip "$2")
    if out=$(kubectl -n shop exec "$1" -- wget -qO- -T 10 "http://$target:8080/api/items" 2>&1) &&
        [ "$out" = items ]; then
        echo "ok: $1 -> $2 GET /api/items allowed"
    else
        echo "FAIL: $1 -> $2 GET /api/items: $out"; fail=1
    fi
    if out=$(kubectl -n shop exec "$1" -- wget -qO- -T 10 "http://$target:8080/admin/" 2>&1); then
        echo "FAIL: $1 -> $2 GET /admin/ was let through: $out"; fail=1
    elif echo "$out" | grep -q 403; then
        echo "ok: $1 -> $2 GET /admin/ denied (403)"
    else
        echo "FAIL: $1 -> $2 GET /admin/ failed without a 403: $out"; fail=1
    fi
done
exit $fail
