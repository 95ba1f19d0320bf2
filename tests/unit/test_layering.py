"""The layering of docs/DESIGN.md, enforced: the sans-I/O core imports no I/O modules,
and lower layers never import higher ones."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "lguest"

# Modules that do I/O, spawn threads or talk to the kernel.
IO_MODULES = {"os", "fcntl", "select", "selectors", "socket", "threading", "termios", "tty",
              "pty", "subprocess", "signal", "mmap", "ctypes", "time", "asyncio", "shutil"}

# The sans-I/O core, and what each part of it may not import from the package.
HIGHER = ["lguest.host", "lguest.backends", "lguest.vhost_user", "lguest.uml",
          "lguest.launcher", "lguest.cmdline", "lguest.cli"]
CORE = {
    "virtio.py": HIGHER + ["lguest.memory", "lguest.virtqueue", "lguest.devices", "lguest.pci"],
    "errors.py": HIGHER + ["lguest.memory", "lguest.virtqueue", "lguest.devices", "lguest.pci"],
    "virtqueue.py": HIGHER + ["lguest.devices", "lguest.pci", "lguest.driver"],
    "x86.py": HIGHER + ["lguest.devices", "lguest.pci", "lguest.driver"],
    "devices": HIGHER + ["lguest.pci", "lguest.driver"],
    "pci": HIGHER + ["lguest.driver"],
    "driver": HIGHER,
}
# memory.py *is* the mapping: it may use mmap and ctypes, nothing else of the I/O kind.
MEMORY_ALLOWED = {"mmap", "ctypes"}


def imports_of(path, package=None):
    """Every module name a file imports, relative imports resolved against `package`."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    if package is None:
        package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            yield name
            for alias in node.names:
                yield f"{name}.{alias.name}"


def core_files():
    for key, forbidden in CORE.items():
        target = PACKAGE / key
        files = sorted(target.rglob("*.py")) if target.is_dir() else [target]
        for f in files:
            if f.exists():
                yield f, forbidden


@pytest.mark.parametrize("path,forbidden", list(core_files()),
                         ids=lambda v: str(v.relative_to(PACKAGE)) if isinstance(v, pathlib.Path) else "")
def test_core_is_sans_io_and_imports_only_lower_layers(path, forbidden):
    bad = []
    for name in imports_of(path):
        top = name.split(".")[0]
        if top in IO_MODULES:
            bad.append(name)
        if any(name == f or name.startswith(f + ".") for f in forbidden):
            bad.append(name)
    assert not bad, f"{path.relative_to(PACKAGE)} imports {sorted(set(bad))}"


def test_memory_uses_only_the_mapping_modules():
    names = {n.split(".")[0] for n in imports_of(PACKAGE / "memory.py")}
    assert names & IO_MODULES <= MEMORY_ALLOWED


def test_the_walker_resolves_relative_and_plain_imports(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import os.path\nfrom ..pci import bus\nfrom . import base\n")
    names = set(imports_of(probe, package="lguest.devices"))
    assert {"os.path", "lguest.pci", "lguest.pci.bus", "lguest.devices.base"} <= names
