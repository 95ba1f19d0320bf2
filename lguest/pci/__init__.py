"""PCI: the config space every device presents (config.py), the virtio 1.0 modern
register file in BAR0 (transport.py) and the bus that routes a guest's port and MMIO
accesses to them (bus.py: `PciBus.access`, the one entry point every backend calls).

Read them in that order: L:400 onwards.
"""
