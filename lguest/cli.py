"""The `lguest` command: subcommands first, then the seed's classic command line.

    lguest [options] <mem-in-mb> vmlinux [args...]    the seed's launcher (lguest.cmdline)
    lguest run [...] -- CMD                            boot a UML guest, run CMD (lguest.uml)
    lguest vhost-user [...]                            serve devices on a socket (lguest.vhost_user)
    lguest tour                                        print the numbered story in order

The first word decides: a known subcommand name, or else the classic launcher, whose
first positional argument is a number, so the two never collide.
"""

import importlib
import sys

from .subcommands import SUBCOMMANDS


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:
        module = importlib.import_module(SUBCOMMANDS[argv[0]][0])
        return module.main(argv[1:])
    from . import cmdline
    return cmdline.main(argv)


if __name__ == "__main__":
    sys.exit(main())
