"""`lguest tour`: read the code in the order it was meant to be read.

Like the seed's Documentation/virtual/lguest/extract, this collects every
numbered comment block (a line holding "#L:NNN", and the comment lines after it)
from the package and prints them in number order, each with the file it came from.
Numbers are unique; a reference to another block is written "L:NNN" without the
hash, and must name a block that exists (a unit test checks both).
"""

import pathlib
import re
import sys

DEFINITION = re.compile(r"#L:(\d+)\b")
REFERENCE = re.compile(r"(?<!#)\bL:(\d+)\b")


def package_root():
    return pathlib.Path(__file__).resolve().parent


def collect(root=None):
    """Return (blocks, references): blocks is a list of (number, path, lineno, text)."""
    root = pathlib.Path(root) if root else package_root()
    blocks, references = [], []
    for path in sorted(root.rglob("*.py")):
        lines = path.read_text(encoding="utf-8").splitlines()
        i = 0
        while i < len(lines):
            for m in REFERENCE.finditer(lines[i]):
                references.append((int(m.group(1)), path, i + 1))
            m = DEFINITION.search(lines[i])
            if not m:
                i += 1
                continue
            text = [lines[i][m.end():].strip()]
            start = i
            i += 1
            while i < len(lines) and lines[i].strip().startswith("#") and not DEFINITION.search(lines[i]):
                for r in REFERENCE.finditer(lines[i]):
                    references.append((int(r.group(1)), path, i + 1))
                text.append(lines[i].strip()[1:].strip())
                i += 1
            blocks.append((int(m.group(1)), path, start + 1, "\n".join(text).strip()))
    return blocks, references


def problems(root=None):
    """Duplicate numbers and dangling references, as readable lines."""
    blocks, references = collect(root)
    seen, found = {}, []
    for number, path, lineno, _ in blocks:
        if number in seen:
            found.append(f"L:{number} defined twice: {seen[number]} and {path.name}:{lineno}")
        seen[number] = f"{path.name}:{lineno}"
    for number, path, lineno in references:
        if number not in seen:
            found.append(f"{path.name}:{lineno} refers to L:{number}, which does not exist")
    return found


def main(argv=None):
    base = package_root()
    blocks, _ = collect(base)
    for number, path, lineno, text in sorted(blocks):
        print(f"[L:{number}] {path.relative_to(base.parent)}:{lineno}")
        print(text)
        print()
    for line in problems(base):
        print("tour problem:", line, file=sys.stderr)
    return 0
