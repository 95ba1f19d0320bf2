"""One UML boot: start linux.uml, stream the command's output, collect its exit status.

#L:840 UML is a Linux kernel that runs as an ordinary host process, so "booting a
# guest" is a fork and exec. Its console lines can be host file descriptors
# (`con1=null,fd:N`: nothing in, output to fd N), which gives us four channels from the
# guest for the price of four pipes: con0 (/dev/tty0) carries the kernel's own messages,
# kept for the error message if the guest dies; tty1 and tty2 the command's stdout and
# stderr, streamed as they come; tty3 the exit-status line of L:820. Devices reach the
# guest through `virtio_uml.device=SOCKET:ID`: UML's virtio_uml driver is a vhost-user
# front-end that connects at boot to a back-end already listening on SOCKET (L:860).
# `uml_dir` and `umid` keep UML's pid file and mconsole socket in our temp directory
# instead of ~/.uml, and TMPDIR its (already unlinked) memory file: see L:841 for where.
"""

import base64
import os
import resource
import selectors
import signal
import subprocess
import time
from dataclasses import dataclass, field

from ..errors import LauncherError
from .init_script import STATUS_MARKER

# Keep this much of the kernel log for error messages.
LOG_TAIL = 64 * 1024
# The kernel command line of UML is at most 4096 bytes (COMMAND_LINE_SIZE); leave room
# for everything else on it.
MAX_ENCODED_COMMAND = 3000


@dataclass
class Outcome:
    status: int | None            # the command's exit status, None if never reported
    timed_out: bool
    uml_returncode: int | None
    log: str                      # the tail of the kernel console
    elapsed: float
    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    status_text: bytearray = field(default_factory=bytearray)
    command_log: str = ""         # what the kernel console said while the command ran


def kernel_arguments(kit, command, workdir, fds, *, mem=64, devices=(), wait=(),
                     ip=None, stdout_device="tty1", control=None, skip_modules=(),
                     stdin_line=None):
    """The linux.uml argv for one boot. fds = (log, stdout, stderr, status) write ends.

    A one-shot boot carries `command` on the command line; an agent boot (command None)
    reads its commands from the `control` fd, the read end of a pipe (L:821), and the
    commands' stdin (L:823) from stdin_line = (read end, write end for its echo[, read
    end of the window-size line])."""
    log, out, err, status = fds
    control_in = "null" if control is None else f"fd:{control}"
    argv = [kit.kernel, f"mem={int(mem)}M", f"initrd={kit.initrd}", "rdinit=/init",
            "con=null", "ssl=null", f"con0=null,fd:{log}", f"con1=null,fd:{out}",
            f"con2=null,fd:{err}", f"con3={control_in},fd:{status}",
            f"uml_dir={workdir}", "umid=guest", "quiet"]
    if stdin_line is not None:
        # tty4 carries the commands' stdin (L:823); tty5, if given, window sizes.
        argv.insert(argv.index("quiet"), "con4=fd:%d,fd:%d" % tuple(stdin_line[:2]))
        if len(stdin_line) > 2:
            argv.insert(argv.index("quiet"), "con5=fd:%d,null" % stdin_line[2])
    argv += [f"virtio_uml.device={sock}:{device_id}" for sock, device_id in devices]
    if command is not None:
        encoded = base64.b64encode(command.encode()).decode()
        if len(encoded) > MAX_ENCODED_COMMAND:
            raise LauncherError(f"command too long for the guest's kernel command line "
                                f"({len(command)} bytes; keep it under ~2 KB, or put a "
                                "script on a block device)")
        argv.append(f"lguest_cmd={encoded}")
    if wait:
        argv.append("lguest_wait=" + ",".join(wait))
    if ip:
        argv.append(f"lguest_ip={ip}")
    if skip_modules:
        argv.append("lguest_skip=" + ",".join(skip_modules))
    argv.append("initcall_blacklist=" + ",".join(skipped_benchmarks(devices)))
    if stdout_device != "tty1":
        argv.append(f"lguest_stdout={stdout_device}")
    return argv


ID_BLOCK = 2      # lguest.virtio.ID_BLOCK (process.py stays free of the device modules)


def skipped_benchmarks(devices):
    """Boot-time benchmarks the guest can do without (initcall_blacklist=).

    Debian's UML kernel spends 0.5-0.9 s of a ~2 s `lguest run -- true` picking the
    fastest RAID6 and XOR routines (raid6_pq and xor are built in, for btrfs). XOR's
    choice is only an optimisation: a default is registered at core_initcall before
    calibrate_xor_blocks runs. RAID6's is not: without raid6_select_algo its routines
    stay unset, and md RAID6 or btrfs RAID5/6 would oops. So it is skipped only for a
    guest with no block device, which has nothing to build a RAID on."""
    skipped = ["calibrate_xor_blocks"]
    if not any(device_id == ID_BLOCK for _, device_id in devices):
        skipped.append("raid6_select_algo")
    return skipped


def _child_setup(cpus):
    def setup():
        # UML aborts on a kernel panic; a core file of the whole guest helps nobody here.
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if cpus is not None:
            os.sched_setaffinity(0, cpus)     # L:887; its guest programs inherit it
    return setup


def parse_status(status_bytes):
    """The exit status from the status channel's text, or None if it never came."""
    for line in reversed(status_bytes.decode("ascii", "replace").splitlines()):
        words = line.strip().split()
        if len(words) == 2 and words[0] == STATUS_MARKER and words[1].isdigit():
            return int(words[1])
    return None


#L:841 Where the guest's RAM lives. UML backs the guest's memory with a file it creates,
# and unlinks at once, in $TMPDIR -- or, with none set, in /dev/shm when that is a
# tmpfs it may map executable. Our workdir is under /tmp, which is often a disk: the
# host then writes the guest's dirty RAM back to that disk (every few seconds, and at
# every sync or syncfs of that file system, which a virtio-fs `sync` in the guest is),
# and each writeback write-protects the pages again, so the next store to each one --
# by the guest, or by a back-end filling a READ -- is a page fault through the disk
# file system. Measured with a UML guest and two virtio-fs back-ends on one CPU: ~11,500
# faults per 64 MiB read and ~2x the back-end's CPU, against ~100 and 1x with the RAM
# on tmpfs. So TMPDIR is /dev/shm when it is a tmpfs we may write and map executable
# with room for the guest's RAM and RAM_HEADROOM_MIB more, and the workdir otherwise.
RAM_DIR = "/dev/shm"
RAM_HEADROOM_MIB = 64


def mount_type(path, mounts="/proc/self/mounts"):
    """The file system type of the mount holding `path` (None if unknown)."""
    path = os.path.realpath(path)
    best, best_type = "", None
    try:
        with open(mounts) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, best_type = point, fields[2]
    return best_type


def ram_dir(mem_mib, workdir, candidate=RAM_DIR, mounts="/proc/self/mounts"):
    """The directory for the guest's memory file (L:841): `candidate` if it is a
    usable tmpfs with room for mem_mib, else `workdir`."""
    try:
        st = os.statvfs(candidate)
    except OSError:
        return workdir
    room_mib = st.f_bavail * st.f_frsize >> 20
    usable = (mount_type(candidate, mounts) == "tmpfs" and not st.f_flag & os.ST_NOEXEC
              and not st.f_flag & os.ST_RDONLY and os.access(candidate, os.W_OK | os.X_OK))
    return candidate if usable and room_mib >= mem_mib + RAM_HEADROOM_MIB else workdir


def memory_of(argv):
    """The guest's memory in MiB from a linux.uml argv's mem=NM (64 if absent)."""
    for arg in argv:
        if arg.startswith("mem=") and arg.endswith("M") and arg[4:-1].isdigit():
            return int(arg[4:-1])
    return 64


def spawn(argv, workdir, fds, cpus=None):
    """Start linux.uml; cpus: the CPUs it may run on (None: any, L:887)."""
    env = dict(os.environ, TMPDIR=ram_dir(memory_of(argv), workdir))
    try:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fds[0], stderr=fds[0],
                                pass_fds=fds, env=env, cwd=workdir,
                                start_new_session=True, preexec_fn=_child_setup(cpus))
    except OSError as e:
        raise LauncherError(f"cannot start {argv[0]}: {e}") from None


def kill_group(proc):
    """Stop UML and the host processes it runs guest programs in (one process group)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def _pump(channels, outcome, on_stdout, on_stderr, deadline):
    """Read every channel until all are closed or the deadline passes."""
    sel = selectors.DefaultSelector()
    for name, fd in channels.items():
        sel.register(fd, selectors.EVENT_READ, name)
    log = bytearray()
    try:
        while sel.get_map():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                outcome.timed_out = True
                break
            for key, _ in sel.select(left):
                data = os.read(key.fd, 65536)
                if not data:
                    sel.unregister(key.fd)
                elif key.data == "stdout":
                    outcome.stdout += data
                    on_stdout(data)
                elif key.data == "stderr":
                    outcome.stderr += data
                    on_stderr(data)
                elif key.data == "status":
                    outcome.status_text += data
                else:
                    log = (log + data)[-LOG_TAIL:]
    finally:
        sel.close()
        outcome.log = log.decode("utf-8", "replace")


def boot(kit, command, workdir, *, timeout=None, on_stdout=lambda b: None,
         on_stderr=lambda b: None, cpus=None, **kernel_options):
    """Boot, run `command` (a shell command line) in the guest, and return an Outcome.
    cpus: the CPUs UML may run on (None: any, L:887).

    The UML process is always gone when this returns, whatever happened (including ^C)."""
    start = time.monotonic()
    pipes = [os.pipe() for _ in range(4)]
    reads = {name: r for name, (r, _) in zip(("log", "stdout", "stderr", "status"), pipes)}
    writes = tuple(w for _, w in pipes)
    proc = None
    outcome = Outcome(None, False, None, "", 0.0)
    try:
        argv = kernel_arguments(kit, command, workdir, writes, **kernel_options)
        proc = spawn(argv, workdir, writes, cpus)
        for w in writes:
            os.close(w)
        writes = ()
        deadline = None if timeout is None else start + timeout
        _pump(reads, outcome, on_stdout, on_stderr, deadline)
        if not outcome.timed_out:
            # Every channel is closed: UML is exiting. Give it a moment to be reaped.
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
    finally:
        if proc is not None:
            kill_group(proc)
            outcome.uml_returncode = proc.returncode
        for fd in list(reads.values()) + list(writes):
            os.close(fd)
    outcome.status = parse_status(outcome.status_text)
    outcome.elapsed = time.monotonic() - start
    return outcome
