#!/usr/bin/env bash
# Print this node's IPv4 address for Ray: the address of $ARENA_NODE_IFNAME when set (pick the fast fabric, e.g.
# ib0 or the interface NCCL uses), else the first address `hostname -I` reports.
set -euo pipefail
if [ -n "${ARENA_NODE_IFNAME:-}" ]; then
  address=$(ip -4 -o addr show dev "$ARENA_NODE_IFNAME" | awk '{print $4}' | cut -d/ -f1 | head -n1)
else
  address=$(hostname -I 2>/dev/null | awk '{print $1}')
  [ -n "$address" ] || address=$(hostname --ip-address | awk '{print $1}')
fi
if [ -z "$address" ]; then
  echo "node_ip.sh: no IPv4 address on ${ARENA_NODE_IFNAME:-any interface} of $(hostname)" >&2
  exit 1
fi
echo "$address"
