"""Assemble a guest of this directory into a flat binary with binutils (as, ld, objcopy)."""

import os
import shutil
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))
TOOLS = ("as", "ld", "objcopy")


def missing_tools():
    return [t for t in TOOLS if shutil.which(t) is None]


def assemble(name, outdir, *, base=0x1000, symbols=None):
    """Return the bytes of tests/hw/guests/<name>.S linked at `base`."""
    bits64 = name.endswith("64")
    src = os.path.join(HERE, name + ".S")
    obj, elf, flat = (os.path.join(outdir, name + ext) for ext in (".o", ".elf", ".bin"))
    defsyms = []
    for key, value in (symbols or {}).items():
        defsyms += ["--defsym", f"{key}={value:#x}"]
    subprocess.run(["as", "--64" if bits64 else "--32", *defsyms, "-o", obj, src],
                   check=True, capture_output=True)
    subprocess.run(["ld", "-m", "elf_x86_64" if bits64 else "elf_i386", "-Ttext", hex(base),
                    "-e", "start", "-o", elf, obj], check=True, capture_output=True)
    subprocess.run(["objcopy", "-O", "binary", "-j", ".text", elf, flat],
                   check=True, capture_output=True)
    with open(flat, "rb") as f:
        return f.read()
