"""Lazy package exports (PEP 562): a name is imported from its module on first use.

`import lguest` and `import lguest.testing` stay cheap this way: the UML, Hypothesis
and pyelftools parts load only when a tool asks for a name that needs them."""

import importlib


def lazy_exports(package, where, namespace):
    """The `__getattr__` and `__dir__` for `package`, whose names live in the modules
    `where` gives (name -> module relative to the package); `namespace` is the
    package's globals(), where each name is kept once resolved."""

    def __getattr__(name):
        if name in where:
            value = getattr(importlib.import_module(f".{where[name]}", package), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted(set(namespace) | set(namespace["__all__"]))

    return __getattr__, __dir__
