"""`scripts/lguest-host [PYTEST ARGS...]`: the project's hw tests on a real lguest host.

The host kernel ($LGUEST_HOST_KERNEL, default ~/.cache/lguest-py/lguest-host/bzImage)
boots under QEMU with an initramfs holding busybox, i386 Python and this project (kit.py).
Its /init runs pytest on the real /dev/lguest and reports pytest's status, which becomes
ours. The guest kernel for the tests is the same bzImage unless $LGUEST_KERNEL names
another; an ELF vmlinux beside the bzImage (or $LGUEST_VMLINUX) is there for the tests
of the ELF loader. Inside the host they are /lguest-host/bzImage and /lguest-host/vmlinux.
"""

import os
import shlex
import sys
import time

from ..errors import LauncherError
from . import kit, qemu

DEFAULT_ARGS = ("-m", "hw", "tests/hw")
GUEST_KERNEL = "/lguest-host/bzImage"
GUEST_VMLINUX = "/lguest-host/vmlinux"

INIT = """#!/bin/busybox sh
# /init of the lguest host: mount what a Linux needs, run {what}, report its status.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /tmp
ip link set lo up
export PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin HOME=/root TMPDIR=/tmp
export PYTHONDONTWRITEBYTECODE=1 TERM=dumb
{exports}
cd /{project}
echo "lguest-host: $(uname -r) $(uname -m), $(ls -l /dev/lguest 2>&1)"
{command}
echo "{marker} $?"
reboot -f
"""


def host_init(command, env=None, what="the tests"):
    """The host's /init: the usual mounts, `env` exported, `command` (one shell line)
    run in the project's directory, and its exit status reported as qemu.EXIT_MARKER's
    line before the host reboots (which ends QEMU: -no-reboot)."""
    exports = "\n".join(f"export {k}={shlex.quote(v)}" for k, v in sorted((env or {}).items()))
    return INIT.format(exports=exports, project=kit.GUEST_PROJECT, marker=qemu.EXIT_MARKER,
                       command=command, what=what)


def init_script(pytest_args, env):
    args = " ".join(shlex.quote(a) for a in pytest_args)
    return host_init(f"python3 -m pytest -p no:cacheprovider -p lguest.testing.plugin {args}",
                     dict(env, LGUEST_IN_HOST="1"))


def guest_kernels():
    """{path inside the host: host path} of the guest kernels the tests use."""
    host = kit.host_kernel()
    guest = os.environ.get("LGUEST_KERNEL") or host
    files = {GUEST_KERNEL: guest}
    vmlinux = os.environ.get("LGUEST_VMLINUX") or os.path.join(os.path.dirname(host), "vmlinux")
    if os.path.isfile(vmlinux):
        files[GUEST_VMLINUX] = vmlinux
    return files


def main(argv=None):
    args = list(sys.argv[1:] if argv is None else argv) or list(DEFAULT_ARGS)
    try:
        kernel = kit.host_kernel()
        files = guest_kernels()
        env = {"LGUEST_KERNEL": GUEST_KERNEL}
        if GUEST_VMLINUX in files:
            env["LGUEST_VMLINUX"] = GUEST_VMLINUX
        started = time.monotonic()
        initramfs = kit.build_initramfs(init_script(args, env), files)
    except LauncherError as e:
        print(f"lguest-host: {e}", file=sys.stderr)
        return 1
    try:
        kit.say(f"initramfs ready in {time.monotonic() - started:.1f} s; booting {kernel} "
                "under qemu-system-i386 (TCG)")
        started = time.monotonic()
        status = qemu.run_host(initramfs, kernel=kernel)
    except LauncherError as e:
        print(f"lguest-host: {e}", file=sys.stderr)
        return 1
    finally:
        os.unlink(initramfs)
    kit.say(f"lguest host finished in {time.monotonic() - started:.0f} s with status {status}")
    return status


if __name__ == "__main__":
    sys.exit(main())
