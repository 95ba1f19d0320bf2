"""The two families of error, as h11 has them.

* LauncherError: the person running us (or the host) got something wrong: a missing
  file, a malformed kernel, a bad option. The command line prints its message on one
  line and exits with status 1.
* GuestError: the guest broke a rule of the virtio or PCI specs. The seed's
  bad_driver()/bad_driver_vq() called errx() on the spot; a library raises instead,
  and the error carries the device, the queue and the rule so a test can check *which*
  rule was broken, not just that something was.
"""

from __future__ import annotations


class LguestError(Exception):
    """Base of every error this library raises on purpose."""


class LauncherError(LguestError):
    """Configuration or host problem: bad option, unreadable file, malformed image."""


class GuestError(LguestError):
    """The guest (its driver) broke a rule.

    `rule` is a short, stable description of the rule (the seed's wording where the
    seed has one, e.g. "Looped descriptor"); `detail` adds the values involved.
    """

    def __init__(self, rule: str, *, device: str | None = None, queue: str | int | None = None,
                 detail: str | None = None):
        self.rule = rule
        self.device = device
        self.queue = queue
        self.detail = detail
        super().__init__(rule)

    def where(self, device: str | None = None, queue: str | int | None = None) -> GuestError:
        """Fill in the device and queue names if a lower layer did not know them."""
        if self.device is None:
            self.device = device
        if self.queue is None:
            self.queue = queue
        return self

    def __str__(self):
        where = self.device or "guest"
        if self.queue is not None:
            where += f" vq {self.queue}"
        text = f"{where}: bad driver: {self.rule}"
        if self.detail:
            text += f" ({self.detail})"
        return text


class GuestMemoryError(GuestError):
    """The guest pointed us outside its memory (the seed's check_pointer)."""
