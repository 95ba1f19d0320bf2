"""The `lguest` command: subcommands first, then the seed's classic command line.

    lguest [options] <mem-in-mb> vmlinux [args...]    the seed's launcher (lguest.cmdline)
    lguest run [...] -- CMD                            boot a UML guest, run CMD (lguest.uml)
    lguest vhost-user [...]                            serve devices on a socket (lguest.vhost_user)
    lguest tour                                        print the numbered story in order

The first word decides: a known subcommand name, or else the classic launcher, whose
first positional argument is a number, so the two never collide.
"""

import importlib
import os
import sys

from .subcommands import SUBCOMMANDS


# What a program killed by SIGPIPE reports to its shell (128 + 13).
EXIT_BROKEN_PIPE = 141


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in SUBCOMMANDS:
            module = importlib.import_module(SUBCOMMANDS[argv[0]][0])
            return module.main(argv[1:])
        from . import cmdline
        return cmdline.main(argv)
    except BrokenPipeError:
        # Whoever read our output left early (`lguest tour | head`, `lguest run ... |
        # head -1`): there is no one to tell, so stop quietly, as `seq` would. The guest
        # and its back-ends were stopped on the way out (their context managers). Our
        # stdout now points nowhere, so the interpreter's final flush cannot fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
