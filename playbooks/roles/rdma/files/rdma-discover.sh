#!/bin/sh
# rdma-discover.sh SYSFS_ROOT -> what NCCL needs to know about this host's network, one fact per line:
#   port DEVICE PORT STATE LINK_LAYER ROCE_V2_GID_INDEX    (state without its numeric prefix; gid "-" if none)
#   netdev NAME                                            (the default route's interface, else the first non-loopback)
root=${1:-/sys/class/infiniband}
if [ -d "$root" ]; then
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
            echo "port ${dev##*/} ${port##*/} ${state:-UNKNOWN} ${layer:-UNKNOWN} $gid"
        done
    done
fi
netdev=$(awk '$2 == "00000000" && $1 != "Iface" { print $1; exit }' /proc/net/route 2>/dev/null)
if [ -z "$netdev" ]; then
    for n in /sys/class/net/*; do
        [ "${n##*/}" = lo ] && continue
        netdev=${n##*/}; break
    done
fi
echo "netdev ${netdev:-lo}"
