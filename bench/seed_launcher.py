"""Seed 000's C launcher (Documentation/lguest/lguest.c), compiled at bench time.

    .venv/bin/python bench/seed_launcher.py      # prints the path of the static i386 binary

The seed as received (../shared/seeds/000_*.txt) is the C source with its whitespace
flattened onto one line and three `&` sequences decoded as HTML entities (`&reg` became
U+00AE, `&not` U+00AC). C does not care about line breaks except in preprocessor
directives, so restore() puts each directive back on a line of its own (a `\\ ` inside
a #define was a continued line) and undoes the entities. The seed includes a few kernel
headers by their path in a kernel tree; the uapi ones are Debian's (linux-libc-dev,
which works for -m32 through the multilib asm link), and lguest_launcher.h, which no
distribution ships, is written here with only the constants the seed uses, from
../shared/reference/lguest-abi.md. Nothing of this lands in the repository: the
restored source and the binary live in the bench cache, keyed by the seed's hash.
"""

import glob
import hashlib
import os
import re
import subprocess
import sys

from common import ROOT, cache_dir, ensure_command, say

ENTITIES = {"\u00ae": "&reg", "\u00ac": "&not"}
DIRECTIVE = re.compile(r"#\s*(include|define|undef|ifndef|ifdef|if|elif|else|endif|error)\b")
# A word that can only start a new top-level declaration: a #define body ends before it.
DECLARATION_START = {"static", "struct", "union", "enum", "typedef", "int", "void", "unsigned",
                     "char", "u8", "u16", "u32", "u64", "bool", "const", "extern"}

# What the seed needs of include/linux/lguest_launcher.h (lguest-abi.md: the requests and
# struct lguest_pending). Our own few lines, not the kernel's header.
LGUEST_LAUNCHER_H = """\
/* The /dev/lguest ABI as lguest-abi.md states it: written for the bench. */
#ifndef LGUEST_BENCH_LAUNCHER_H
#define LGUEST_BENCH_LAUNCHER_H
#include <linux/types.h>
enum lguest_req {
\tLHREQ_INITIALIZE = 0, LHREQ_GETDMA = 1, LHREQ_IRQ = 2, LHREQ_BREAK = 3,
\tLHREQ_EVENTFD = 4, LHREQ_GETREG = 5, LHREQ_SETREG = 6, LHREQ_TRAP = 7,
};
struct lguest_pending {
\t__u8 trap;
\t__u8 insn[7];
\t__u32 addr;
};
#endif
"""

# Linux 4.13 renamed the boot protocol's e820 names in <asm/bootparam.h> (and E820_RAM
# left uapi); the seed predates that. The old names, mapped onto Debian's header.
BOOTPARAM_COMPAT_H = """\
/* The pre-4.13 e820 names the seed uses, on a newer <asm/bootparam.h>. */
#include_next <asm/bootparam.h>
#define e820entry boot_e820_entry
#define e820_map e820_table
#define E820_RAM 1
"""


def seed_path():
    found = sorted(glob.glob(os.path.join(ROOT, "..", "shared", "seeds", "000_*.txt")))
    if not found:
        raise SystemExit("bench: seed 000 not found at ../shared/seeds/000_*.txt")
    return found[0]


def _skip_literal(text, i):
    """Index just past the string or character literal starting at text[i]."""
    quote = text[i]
    i += 1
    while text[i] != quote:
        i += 2 if text[i] == "\\" else 1
    return i + 1


def _define_end(text, i):
    """Where the #define whose body starts at text[i] ends (exclusive)."""
    depth = 0
    while i < len(text):
        c = text[i]
        if text.startswith("/*", i) or (c == "#" and DIRECTIVE.match(text, i)
                                        and text[i - 1] == " "):
            return i
        if text.startswith("\\ ", i):
            i += 2                  # a continued line: the next line still belongs here
            continue
        if c in "\"'":
            i = _skip_literal(text, i)
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c.isalpha() or c == "_":
            word = re.match(r"\w+", text[i:]).group()
            if depth == 0 and word in DECLARATION_START and text[i - 1] == " ":
                return i
            i += len(word)
            continue
        i += 1
    return i


def _directive_end(text, m):
    kind = m.group(1)
    i = m.end()
    if kind == "include":
        close = ">" if text[i:].lstrip().startswith("<") else '"'
        start = text.index("<" if close == ">" else '"', i)
        return text.index(close, start + 1) + 1
    if kind in ("ifndef", "ifdef", "undef"):
        return re.compile(r"\s*\w+").match(text, i).end()
    if kind in ("else", "endif"):
        return i
    name = re.compile(r"\s*\w+(\([^)]*\))?").match(text, i)      # define NAME or NAME(args)
    return _define_end(text, name.end())


def restore(text):
    """The seed's flattened text as compilable C: directives on their own lines."""
    for char, entity in ENTITIES.items():
        text = text.replace(char, entity)
    out, i = [], 0
    while i < len(text):
        if text.startswith("/*", i):
            end = text.index("*/", i + 2) + 2
            out.append(text[i:end])
            i = end
        elif text[i] in "\"'":
            end = _skip_literal(text, i)
            out.append(text[i:end])
            i = end
        elif text[i] == "#" and (m := DIRECTIVE.match(text, i)):
            end = _directive_end(text, m)
            directive = text[i:end].rstrip().replace("\\ ", "\\\n")
            out.append("\n" + directive + "\n")
            i = end
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def build():
    """The static i386 binary of the seed's launcher (cached); SystemExit saying why not."""
    gcc = ensure_command("gcc", ["gcc", "gcc-multilib", "libc6-dev-i386"])
    with open(seed_path(), encoding="utf-8") as f:
        seed = f.read()
    digest = hashlib.sha256((seed + LGUEST_LAUNCHER_H + BOOTPARAM_COMPAT_H).encode()).hexdigest()[:12]
    work = os.path.join(cache_dir(), f"seed-launcher-{digest}")
    binary = os.path.join(work, "lguest-seed")
    if os.path.exists(binary):
        return binary
    # The seed includes "../../include/uapi/linux/X.h" and "../../include/linux/
    # lguest_launcher.h" (Documentation/lguest/ in a kernel tree): lay out the same shape.
    src_dir = os.path.join(work, "tools", "lguest")
    uapi = os.path.join(work, "include", "uapi", "linux")
    os.makedirs(src_dir, exist_ok=True)
    os.makedirs(uapi, exist_ok=True)
    source = restore(seed)
    for header in sorted(set(re.findall(r'"\.\./\.\./include/uapi/linux/(\w+\.h)"', source))):
        with open(os.path.join(uapi, header), "w") as f:
            f.write(f"#include <linux/{header}>\n")      # Debian's linux-libc-dev
    os.makedirs(os.path.join(work, "include", "linux"), exist_ok=True)
    with open(os.path.join(work, "include", "linux", "lguest_launcher.h"), "w") as f:
        f.write(LGUEST_LAUNCHER_H)
    compat = os.path.join(work, "compat")
    os.makedirs(os.path.join(compat, "asm"), exist_ok=True)
    with open(os.path.join(compat, "asm", "bootparam.h"), "w") as f:
        f.write(BOOTPARAM_COMPAT_H)
    c_file = os.path.join(src_dir, "lguest.c")
    with open(c_file, "w") as f:
        f.write(source)
    argv = [gcc, "-m32", "-static", "-O2", "-w", "-I", compat, "-o", binary + ".tmp", c_file]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=src_dir)
    if done.returncode != 0:
        raise SystemExit(f"bench: the seed's launcher did not compile ({' '.join(argv)}):\n"
                         + done.stderr[-2000:])
    os.replace(binary + ".tmp", binary)
    say(f"compiled the seed's launcher: {binary}")
    return binary


if __name__ == "__main__":
    print(build())
    sys.exit(0)
