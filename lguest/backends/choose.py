"""Which backend runs the guest: the best this host offers, or the one asked for.

Apart from backends/base.py so that the interface (L:001) never imports the classes
that implement it: each of them imports base, and this imports each of them.
"""

from ..errors import LauncherError


def open_backend(name=None, **options):
    """The best backend this host offers, or the one named.

    Like selectors.DefaultSelector: try /dev/lguest, then KVM; "fake" is only
    chosen by name. Fails with a LauncherError naming everything looked for.
    """
    if name == "fake":
        from .fake import FakeBackend
        return FakeBackend(**options)
    tried = []
    if name in (None, "lguest"):
        from .lguest_dev import LguestBackend
        try:
            return LguestBackend(**options)
        except LauncherError as e:
            if name == "lguest":
                raise
            tried.append(str(e))
    if name in (None, "kvm"):
        try:
            from .kvm import KvmBackend   # lazy: the KVM backend is optional
        except ImportError as e:
            if name == "kvm":
                raise LauncherError(f"the KVM backend is not available: {e}") from e
            tried.append(f"KVM backend not available ({e})")
        else:
            try:
                return KvmBackend(**options)
            except LauncherError as e:
                if name == "kvm":
                    raise
                tried.append(str(e))
    if name not in (None, "lguest", "kvm"):
        raise LauncherError(f"unknown backend {name!r}: choose lguest, kvm or fake")
    raise LauncherError("no way to run a guest here: " + "; ".join(tried)
                        + " (try --backend=fake for a simulated guest)")
