"""The guest's /init, as text: a busybox shell script (the guest side of the agent).

#L:820 The guest's whole life is one shell script. The host passes what it needs at boot
# on the kernel command line, which the kernel hands to init as environment variables:
# `lguest_wait` (devices to wait for: vda,vdb,hvc0 in /dev, eth0 in /sys/class/net),
# `lguest_ip` (an address for eth0) and `lguest_stdout` (tty1, or hvc0 to send the
# commands' output through our virtio console). UML's console lines are host file
# descriptors (L:840): /dev/tty1 carries a command's stdout, /dev/tty2 its stderr, and
# /dev/tty3 is the control line, the channel nothing else writes to, so the host can
# trust it. Then the script is an agent (L:821): it opens tty3, says it is ready (what
# reaches a UML line that no one has open is dropped, so the host must not write before
# that), reads one command per line from tty3, runs it, and answers on tty3; when the host closes the line it syncs and does
# `poweroff -f`, and the UML process exits. A one-shot boot puts the command on the
# kernel command line instead (`lguest_cmd`, base64 so no quoting survives to bite us),
# runs it once and powers off. If the script dies, the kernel panics ("Attempted to kill
# init"), the host sees no status line and says so. Nothing in it may end the shell
# early: a redirection that fails on `exec` would, so its targets are made sure of.
#
#L:821 The agent's protocol, one line each way per command on tty3 (raw, no echo):
#   host -> guest   TOKEN COMMAND, with "\" written "\\" and newlines "\n"
#   guest -> host   lguest-exit-status TOKEN STATUS
# and, after the command and everything it started are gone, the guest writes
# END_MARKER + TOKEN + ">>" at the end of the stdout and of the stderr streams. The host
# knows a command is over when it has all three: the status, and both streams' ends (the
# three lines are separate channels, so the status may overtake the output). TOKEN is
# fresh random hex per command, so no output can forge another command's end. Each
# command starts from the same place (its text is decoded by printf %b, a shell builtin:
# a process per command costs ~10 ms in UML, so there is one, the command's own sh): an empty /root as its working directory and HOME,
# an environment of PATH and HOME only, stdin from /dev/null; afterwards every process
# it left behind is killed and, with block devices, the file systems are synced, so its
# writes have reached our block back-end before run() returns. What does carry over in a warm guest: files
# outside /root (e.g. /tmp), mounts, loaded modules, the guest's page cache.
"""

STATUS_MARKER = "lguest-exit-status"
READY_MARKER = "lguest-agent-ready"
END_MARKER = "<<lguest-end "

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
  case ",$lguest_skip," in *",$m,"*) continue ;; esac    # no such device: ~30 ms each
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
# hvc0 too passes bytes as they are (no \n -> \r\n), as the tty lines do; hvc resets
# its settings when the last user closes it, so ours stays open, as fd 4.
exec 4>"$out"
stty raw -echo <&4 2>/dev/null
# The kernel's leftovers (its unknown arguments: mem=, uml_dir=, lguest_*=) and ours
# are not the commands' environment: PATH and HOME are.
cmd=$lguest_cmd
case ",$lguest_wait" in *,vd*) blocks=1 ;; esac
for v in $(env | sed -n 's/^\([A-Za-z_][A-Za-z0-9_]*\)=.*/\1/p'); do
  case $v in PATH|HOME) ;; *) unset "$v" ;; esac
done
run_command() {
  # An empty /root without a fork when it is already empty (the usual case).
  [ -d /root ] || mkdir /root
  for f in /root/* /root/.[!.]* /root/..?*; do
    [ -e "$f" ] || [ -L "$f" ] || continue
    rm -rf /root; mkdir /root; break
  done
  cd /root; unset OLDPWD
  sh /tmp/lguest-cmd </dev/null >&4 2>/dev/tty2 4>&-
  status=$?
  cd /
  kill -9 -1 2>/dev/null
  [ -z "$blocks" ] || sync
}
if [ -n "$cmd" ]; then
  echo "$cmd" | base64 -d > /tmp/lguest-cmd
  run_command
  echo "lguest-exit-status $status" >/dev/tty3
else
  exec 3</dev/tty3
  stty raw -echo <&3 2>/dev/null
  echo "lguest-agent-ready" >/dev/tty3
  while IFS= read -r line <&3; do
    token=${line%% *}
    printf '%b' "${line#* }" > /tmp/lguest-cmd
    run_command
    printf '%s' "<<lguest-end $token>>" >&4
    printf '%s' "<<lguest-end $token>>" >&2
    echo "lguest-exit-status $token $status" >/dev/tty3
  done
fi
sync
poweroff -f
"""
