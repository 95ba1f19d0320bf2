"""lguest.testing: test a virtio device, a driver model or a whole tool the way lguest-py
tests its own.

- Hostile rings (Hypothesis strategies): `hostile_rings()`, `random_byte_rings()`,
  `random_field_rings()`, `random_address_rings()`, drawn as `HostileRing` recipes;
  `exercise_queue()` and `serve_hostile()` run device code against them.
- State machines (Hypothesis `RuleBasedStateMachine` bases): `SplitRingMachine` (the
  driver and device halves of one ring, against the spec's notification rules),
  `StatusMachine` (the virtio-PCI status and feature machine around a device you
  supply) and `PciConfigMachine` (PCI config space of a device you supply, byte by byte).
- `DriverHarness`: guest memory, a PCI bus with your devices and our guest-side driver,
  probed and live (what the `virtio_driver` fixture gives you).
- `FakeRuns`: run, record and replay whole fake-backend runs (trap streams).
- The pytest plugin (lguest.testing.plugin, on by default): the `hw` marker and the
  `lguest_guest`, `virtio_driver`, `fake_backend` fixtures. See docs/library.md.

Hypothesis is imported only by the parts that need it, when first used.
"""

from .._lazy import lazy_exports

__all__ = ["DriverHarness", "FakeRuns", "HostileRing", "PciConfigMachine", "SplitRingMachine",
           "StatusMachine", "exercise_queue", "hostile_rings", "inside_guest",
           "random_address_rings", "random_byte_rings", "random_field_rings", "ring_memory",
           "serve_hostile", "RING_MEMORY"]

_WHERE = {
    "DriverHarness": "harness",
    "FakeRuns": "fake",
    "SplitRingMachine": "ring_machine",
    "StatusMachine": "status_machine",
    "PciConfigMachine": "pci_config",
    **{name: "rings" for name in ("HostileRing", "RING_MEMORY", "exercise_queue",
                                  "hostile_rings", "inside_guest", "random_address_rings",
                                  "random_byte_rings", "random_field_rings", "ring_memory",
                                  "serve_hostile")},
}


__getattr__, __dir__ = lazy_exports(__name__, _WHERE, globals())
