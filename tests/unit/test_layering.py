"""The layering of docs/DESIGN.md, enforced: the sans-I/O core imports no I/O modules,
lower layers never import higher ones, and no module imports itself in a circle."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "lguest"

# Modules that do I/O, spawn threads or talk to the kernel.
IO_MODULES = {"os", "fcntl", "select", "selectors", "socket", "threading", "_thread", "termios",
              "tty", "pty", "subprocess", "signal", "mmap", "ctypes", "time", "asyncio", "shutil",
              "io", "multiprocessing", "concurrent"}

# DESIGN.md's allow-list, file by file: the only I/O-kind modules a core file may use.
ALLOWED = {
    "memory.py": {"mmap", "ctypes"},          # it *is* the guest's mapping
    "loader/mapping.py": {"os", "mmap", "ctypes"},   # maps the kernel and initrd files
    "loader/image.py": {"io"},                 # io.BytesIO over bytes already read
    "virtqueue.py": {"_thread"},               # allocate_lock: the ring's fence, no thread
    "driver/vring.py": {"_thread"},            # the same fence on the driver's side
}

# The sans-I/O core, and what each part of it may not import from the package.
HIGHER = ["lguest.host", "lguest.backends", "lguest.vhost_user", "lguest.uml",
          "lguest.launcher", "lguest.cmdline", "lguest.cli"]
BOTTOM = HIGHER + ["lguest.memory", "lguest.virtqueue", "lguest.devices", "lguest.pci",
                   "lguest.driver", "lguest.loader"]
CORE = {
    "virtio.py": BOTTOM,
    "errors.py": BOTTOM,
    "config.py": BOTTOM + ["lguest.transport_rules"],
    "transport_rules.py": BOTTOM + ["lguest.config"],
    "virtqueue.py": HIGHER + ["lguest.devices", "lguest.pci", "lguest.driver"],
    "x86.py": HIGHER + ["lguest.devices", "lguest.pci", "lguest.driver"],
    "loader": HIGHER + ["lguest.devices", "lguest.pci", "lguest.driver"],
    "devices": HIGHER + ["lguest.pci", "lguest.driver"],
    "pci": HIGHER + ["lguest.driver"],
    "driver": HIGHER,
}


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
    allowed = ALLOWED.get(str(path.relative_to(PACKAGE)), set())
    for name in imports_of(path):
        top = name.split(".")[0]
        if top in IO_MODULES and top not in allowed:
            bad.append(name)
        if any(name == f or name.startswith(f + ".") for f in forbidden):
            bad.append(name)
    assert not bad, f"{path.relative_to(PACKAGE)} imports {sorted(set(bad))}"


def test_the_allow_list_names_real_files_and_is_in_design_md():
    design = (PACKAGE.parent / "docs" / "DESIGN.md").read_text(encoding="utf-8")
    for path, modules in ALLOWED.items():
        assert (PACKAGE / path).is_file(), path
        assert f"`{path}`" in design, f"DESIGN.md's allow-list does not name {path}"
        used = {n.split(".")[0] for n in imports_of(PACKAGE / path)} & IO_MODULES
        assert used == modules, f"{path} uses {sorted(used)}, the allow-list says {sorted(modules)}"


# -- import circles ------------------------------------------------------------------------
def modules_of(package_dir):
    """{dotted module name: file} for a package directory (a package is its __init__)."""
    found = {}
    for f in package_dir.rglob("*.py"):
        parts = f.relative_to(package_dir.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return found


def import_graph(package_dir):
    """Module -> the package's modules it imports anywhere in it (at the top or inside a
    function: a lazy import is still a dependency). `from pkg import mod` is an edge to
    pkg.mod; pkg itself runs first as its parent, which is not a circle of ours."""
    modules = modules_of(package_dir)
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
                module = ".".join(base + ([node.module] if node.module else []))
                targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in modules else module
                           for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in modules:      # a name inside a module
                    target = target.rpartition(".")[0]
                if target and target != name:
                    edges.add(target)
        graph[name] = edges
    return graph


def circles(graph):
    """The strongly connected components of more than one module (Tarjan), sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def test_no_import_circles():
    assert circles(import_graph(PACKAGE)) == []


def test_the_circle_finder_finds_a_circle(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("from . import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..c import thing\n")
    (pkg / "c.py").write_text("from pkg import a\nimport os\n")
    graph = import_graph(pkg)
    assert graph["pkg.sub"] == {"pkg.sub.b"} and graph["pkg.c"] == {"pkg.a"}
    assert circles(graph) == [["pkg.a", "pkg.c", "pkg.sub.b"]]


def test_the_walker_resolves_relative_and_plain_imports(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import os.path\nfrom ..pci import bus\nfrom . import base\n")
    names = set(imports_of(probe, package="lguest.devices"))
    assert {"os.path", "lguest.pci", "lguest.pci.bus", "lguest.devices.base"} <= names
