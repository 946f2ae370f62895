#!/bin/sh
# count-gpus.sh PCI_DEVICES_DIR -> number of NVIDIA GPUs: vendor 0x10de with class 0x0300xx (VGA) or
# 0x0302xx (3D controller), so the GPUs' audio functions do not count.
n=0
for d in "${1:-/sys/bus/pci/devices}"/*; do
    [ "$(cat "$d/vendor" 2>/dev/null)" = 0x10de ] || continue
    case "$(cat "$d/class" 2>/dev/null)" in
        0x0300*) n=$((n + 1)) ;;
        0x0302*) n=$((n + 1)) ;;
        *) ;;
    esac
done
echo "$n"
