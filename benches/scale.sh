#!/usr/bin/env bash
# Soundwave at scale, one command: builds release, starts a three-node cluster on free
# loopback ports, seeds PRODUCTS products and ORDERS orders through the demo (the normal
# command path, batched), then measures start-up, uncached filtered lists and details, order
# placement, memory and the catch-up of an empty node from a snapshot. All waits are bounded
# and every process is stopped at the end. Details: benches/scale.py.
#
#   benches/scale.sh                              # 100,000 products, 1,000,000 orders
#   PRODUCTS=10000 ORDERS=50000 benches/scale.sh  # a quick run
set -euo pipefail
cd "$(dirname "$0")/.."
command -v oha >/dev/null || [ -x ~/.cargo/bin/oha ] || cargo install oha --locked
cargo build --release --quiet --bin soundwave
exec python3 benches/scale.py
