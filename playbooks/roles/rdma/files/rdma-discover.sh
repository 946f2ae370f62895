#!/bin/sh
# rdma-discover.sh SYSFS_ROOT -> one line per port: "device port state link_layer roce_v2_gid_index"
# (state without the numeric prefix; gid index "-" when the port has no RoCE v2 GID).
root=${1:-/sys/class/infiniband}
[ -d "$root" ] || exit 0
for dev in "$root"/*; do
    [ -e "$dev/ports" ] || continue
    for port in "$dev"/ports/*; do
        state=$(sed 's/^[0-9]*: *//' "$port/state" 2>/dev/null)
        layer=$(cat "$port/link_layer" 2>/dev/null)
        gid=-
        for t in "$port"/gid_attrs/types/*; do
            [ -r "$t" ] || continue
            # RoCE v2 with an IPv4-mapped address (::ffff:a.b.c.d) is what NCCL wants on RoCE
            if [ "$(cat "$t" 2>/dev/null)" = "RoCE v2" ] && grep -q '^0000:0000:0000:0000:0000:ffff' "$port/gids/${t##*/}" 2>/dev/null; then
                gid=${t##*/}; break
            fi
        done
        echo "${dev##*/} ${port##*/} ${state:-UNKNOWN} ${layer:-UNKNOWN} $gid"
    done
done
