"""Which backend runs the guest: the best this host offers, or the one asked for.

Apart from backends/base.py so that the interface (L:001) never imports the classes
that implement it: each of them imports base, and this imports each of them.
"""

from ..errors import LauncherError


def _open_lguest(**options):
    from .lguest_dev import LguestBackend
    return LguestBackend(**options)


def _open_kvm(**options):
    try:
        from .kvm import KvmBackend   # lazy: the KVM backend is optional
    except ImportError as e:
        raise LauncherError(f"the KVM backend is not available: {e}") from e
    return KvmBackend(**options)


# In the order they are tried when no backend is named.
CANDIDATES = {"lguest": _open_lguest, "kvm": _open_kvm}


def open_backend(name=None, **options):
    """The best backend this host offers, or the one named.

    Like selectors.DefaultSelector: try /dev/lguest, then KVM; "fake" is only
    chosen by name. Fails with a LauncherError naming everything looked for.
    """
    if name == "fake":
        from .fake import FakeBackend
        return FakeBackend(**options)
    if name is not None:
        if name not in CANDIDATES:
            raise LauncherError(f"unknown backend {name!r}: choose lguest, kvm or fake")
        return CANDIDATES[name](**options)
    tried = []
    for opener in CANDIDATES.values():
        try:
            return opener(**options)
        except LauncherError as e:
            tried.append(str(e))
    raise LauncherError("no way to run a guest here: " + "; ".join(tried)
                        + " (try --backend=fake for a simulated guest)")
