"""Which kernel modules the guest needs, and in which order to load them.

#L:802 A module's dependencies are written into the module itself: the `.modinfo` ELF
# section is a run of NUL-terminated "key=value" strings (what `modinfo` prints), and
# `depends=a,b` names the modules whose symbols it uses. virtio_net, for one, depends on
# net_failover, which depends on failover. Modules may be shipped compressed (.ko.xz,
# .ko.gz, .ko.zst); Debian's UML kernel has CONFIG_MODULE_COMPRESS_NONE, but the kit reads
# all four so a newer kernel package does not break it. busybox's insmod takes no
# dependencies into account, so we load them depth first: dependencies before dependents.
"""

import gzip
import io
import lzma
import os
import shutil
import subprocess

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from ..errors import LauncherError

MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.gz", ".ko.zst")


def module_name(path):
    """'.../virtio-net.ko.xz' -> 'virtio_net' (the kernel treats '-' and '_' alike)."""
    base = os.path.basename(path)
    for suffix in MODULE_SUFFIXES:
        if base.endswith(suffix):
            base = base[:-len(suffix)]
            break
    return base.replace("-", "_")


def decompress_module(name, data):
    """Return the plain ELF bytes of a module file, whatever its compression."""
    try:
        if name.endswith(".xz"):
            return lzma.decompress(data)
        if name.endswith(".gz"):
            return gzip.decompress(data)
    except (lzma.LZMAError, OSError, EOFError) as e:
        raise LauncherError(f"{name}: cannot decompress: {e}") from None
    if name.endswith(".zst"):
        if not shutil.which("zstd"):
            raise LauncherError(f"{name}: zstd-compressed and the `zstd` command is missing")
        return subprocess.run(["zstd", "-dc"], input=data, capture_output=True, check=True).stdout
    return data


def parse_modinfo(section):
    """Split a .modinfo section into {key: [values]} (keys such as alias repeat)."""
    info = {}
    for item in bytes(section).split(b"\0"):
        if not item:
            continue
        key, sep, value = item.decode("utf-8", "replace").partition("=")
        if sep:
            info.setdefault(key, []).append(value)
    return info


def modinfo(elf_bytes, name="module"):
    """Read a module's .modinfo section with pyelftools."""
    try:
        section = ELFFile(io.BytesIO(elf_bytes)).get_section_by_name(".modinfo")
    except ELFError as e:
        raise LauncherError(f"{name}: not an ELF module: {e}") from None
    if section is None:
        raise LauncherError(f"{name}: no .modinfo section")
    return parse_modinfo(section.data())


def depends(info):
    """The module names in a modinfo's depends= field ('' means none)."""
    names = []
    for value in info.get("depends", []):
        names += [n.strip().replace("-", "_") for n in value.split(",") if n.strip()]
    return names


def index_modules(root):
    """Map module name -> file path for every module under root."""
    found = {}
    for directory, _, files in os.walk(root):
        for f in files:
            if f.endswith(MODULE_SUFFIXES):
                found[module_name(f)] = os.path.join(directory, f)
    return found


def load_order(wanted, depends_of):
    """Dependencies first, each module once. depends_of(name) -> list of names.

    A dependency cycle cannot be loaded by insmod at all, so it is an error."""
    order, state = [], {}

    def visit(name, path):
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            raise LauncherError("module dependency cycle: " + " -> ".join(path + [name]))
        state[name] = "visiting"
        for dep in depends_of(name):
            visit(dep, path + [name])
        state[name] = "done"
        order.append(name)

    for name in wanted:
        visit(name, [])
    return order


def resolve(root, wanted):
    """Return [(name, plain ELF bytes)] for wanted modules under root and their deps."""
    index = index_modules(root)
    cache = {}

    def elf_of(name):
        if name not in cache:
            if name not in index:
                raise LauncherError(f"kernel module {name} not found under {root}")
            with open(index[name], "rb") as f:
                cache[name] = decompress_module(index[name], f.read())
        return cache[name]

    order = load_order(wanted, lambda n: depends(modinfo(elf_of(n), n)))
    return [(name, elf_of(name)) for name in order]
