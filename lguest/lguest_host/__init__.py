"""Host-side tooling for a real lguest host: an i386 Linux with CONFIG_LGUEST, under QEMU.

kit.py builds the host's initramfs from Debian's i386 packages; qemu.py boots it;
runner.py runs the project's hw tests inside it on the real /dev/lguest
(`scripts/lguest-host`). None of this is the launcher: it is how we test it for real.
"""
