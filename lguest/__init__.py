"""lguest-py: the lguest launcher, rebuilt as a Python library.

Start reading at lguest/backends/base.py (the Backend interface, our /dev/lguest), or run
`lguest tour` to read the numbered story in order.
"""

__version__ = "0.1.0"


def __getattr__(name):
    # `lguest.Guest` without importing the UML machinery for everyone else (PEP 562).
    if name == "Guest":
        from .uml.guest import Guest
        return Guest
    raise AttributeError(f"module 'lguest' has no attribute {name!r}")
