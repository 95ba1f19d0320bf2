"""The `lguest` subcommands: name -> (module, one-line help). Each module has
main(argv) -> exit status. Read by cli.py, which dispatches, and by cmdline.py, whose
--help lists them; apart from both so that neither imports the other."""

SUBCOMMANDS = {
    "run": ("lguest.uml.cli", "boot a User-Mode Linux guest on our devices and run a command in it"),
    "vhost-user": ("lguest.vhost_user.cli", "serve our devices to a vhost-user front-end on a unix socket"),
    "tour": ("lguest.tour", "print the code's numbered comments in reading order"),
}
