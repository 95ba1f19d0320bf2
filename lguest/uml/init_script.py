"""The guest's /init, as text: a busybox shell script.

#L:820 The guest's whole life is one shell script. The host passes everything it needs
# on the kernel command line, which the kernel hands to init as environment variables:
# `lguest_cmd` (the command, base64 so no quoting survives to bite us), `lguest_wait`
# (devices to wait for: vda,vdb,hvc0 in /dev, eth0 in /sys/class/net), `lguest_ip`
# (an address for eth0) and `lguest_stdout` (tty1, or hvc0 to send the command's
# output through our virtio console). UML's console lines are host file descriptors (L:840): /dev/tty1 carries the
# command's stdout, /dev/tty2 its stderr and /dev/tty3 one line, "lguest-exit-status N",
# the channel nothing else writes to, so the host can trust it. Then `poweroff -f`, and
# the UML process exits. If the script dies, the kernel panics ("Attempted to kill
# init"), the host sees no status line and says so. Nothing in it may end the shell
# early: a redirection that fails on `exec` would, so its targets are made sure of.
"""

STATUS_MARKER = "lguest-exit-status"

INIT_SCRIPT = r"""#!/bin/sh
/bin/busybox mount -t proc proc /proc
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm && mount -t tmpfs tmp /tmp
# devtmpfs fills /dev from a kernel thread, so under load the console nodes may not be
# there yet; a failed `exec 2>` redirection would end this shell (and panic the guest).
for t in 1 2 3; do
  [ -e /dev/tty$t ] || mknod /dev/tty$t c 4 $t
  stty -F /dev/tty$t raw -echo 2>/dev/null
done
exec 2>/dev/tty2
for m in $(cat /lib/modules/load-order); do
  insmod /lib/modules/$m.ko || echo "lguest init: insmod $m failed" >&2
done
# Loaded, the module files would only take up guest RAM (the root is in memory).
rm -f /lib/modules/*.ko
for d in $(echo "$lguest_wait" | tr , ' '); do
  n=0
  while [ ! -e /dev/$d ] && [ ! -e /sys/class/net/$d ] && [ $n -lt 100 ]; do
    usleep 20000; n=$((n+1))
  done
  [ -e /dev/$d ] || [ -e /sys/class/net/$d ] || echo "lguest init: $d did not appear" >&2
done
if [ -n "$lguest_ip" ]; then
  ip link set lo up; ip link set eth0 up && ip addr add "$lguest_ip" dev eth0
fi
out=/dev/${lguest_stdout:-tty1}
[ -e "$out" ] || out=/dev/tty1
cd /root
echo "$lguest_cmd" | base64 -d > /tmp/lguest-cmd
sh /tmp/lguest-cmd </dev/null >"$out" 2>/dev/tty2
echo "lguest-exit-status $?" >/dev/tty3
sync
poweroff -f
"""
