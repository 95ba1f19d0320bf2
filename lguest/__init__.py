"""lguest-py: the lguest launcher, rebuilt as a Python library.

Start reading at lguest/backends/base.py (the Backend interface, our /dev/lguest), or run
`lguest tour` to read the numbered story in order.
"""

__version__ = "0.1.0"
