"""The PCI configuration space of one device: the seed's struct pci_config.

#L:400 We do PCI. This is mainly done to let us test the kernel virtio PCI code
# (the seed's comment 217), and it is what every modern virtio driver expects. Each device
# presents 152 bytes of config space: the standard type-0 header, then a chain of
# vendor-specific capabilities that tell the driver where in BAR0 to find the virtio
# structures: common config -> notify -> ISR -> the PCI_CFG access window -> device
# config. The layout is declared once, below, as tables of (name, offset, size) with
# the names the specs use; everything else reads and writes fields by those names.
# All fields are little-endian, as PCI is.
"""

from .. import virtio

PCI_VENDOR_ID_REDHAT_QUMRANET = 0x1AF4
VIRTIO_PCI_DEVICE_ID_BASE = 0x1040
PCI_CAP_ID_VNDR = 0x09
PCI_STATUS_CAP_LIST = 1 << 4

# virtio 1.0 4.1.4: cfg_type values of struct virtio_pci_cap.
VIRTIO_PCI_CAP_COMMON_CFG = 1
VIRTIO_PCI_CAP_NOTIFY_CFG = 2
VIRTIO_PCI_CAP_ISR_CFG = 3
VIRTIO_PCI_CAP_DEVICE_CFG = 4
VIRTIO_PCI_CAP_PCI_CFG = 5

# The type-0 header (PCI Local Bus 3.0, 6.1), with the seed's field names.
HEADER = (
    ("vendor_id", 0, 2), ("device_id", 2, 2), ("command", 4, 2), ("status", 6, 2),
    ("revid", 8, 1), ("prog_if", 9, 1), ("subclass", 10, 1), ("class", 11, 1),
    ("cacheline_size", 12, 1), ("lat_timer", 13, 1), ("header_type", 14, 1), ("bist", 15, 1),
    ("bar0", 16, 4), ("bar1", 20, 4), ("bar2", 24, 4), ("bar3", 28, 4), ("bar4", 32, 4),
    ("bar5", 36, 4), ("cardbus_cis_ptr", 40, 4),
    ("subsystem_vendor_id", 44, 2), ("subsystem_device_id", 46, 2),
    ("expansion_rom_addr", 48, 4), ("capabilities", 52, 1), ("reserved1", 53, 3),
    ("reserved2", 56, 4),
    ("irq_line", 60, 1), ("irq_pin", 61, 1), ("min_grant", 62, 1), ("max_latency", 63, 1),
)

# virtio 1.0 4.1.4: struct virtio_pci_cap (16 bytes).
VIRTIO_PCI_CAP = (
    ("cap_vndr", 0, 1), ("cap_next", 1, 1), ("cap_len", 2, 1), ("cfg_type", 3, 1),
    ("bar", 4, 1), ("padding", 5, 3), ("offset", 8, 4), ("length", 12, 4),
)
CAP_SIZE = 16

# The capability chain, in the order the seed lays it out after the header. The
# notify cap adds notify_off_multiplier; the cfg window adds the seed's u32 pci_cfg_data
# (struct virtio_pci_cfg_cap_u32).
CAPABILITIES = (
    ("common", 64, CAP_SIZE, ()),
    ("notify", 80, CAP_SIZE + 4, (("notify_off_multiplier", 16, 4),)),
    ("isr", 100, CAP_SIZE, ()),
    ("device", 116, CAP_SIZE, ()),
    ("cfg_access", 132, CAP_SIZE + 4, (("pci_cfg_data", 16, 4),)),
)
CONFIG_SIZE = 152      # sizeof(struct pci_config)


def _field_table():
    table = {name: (off, size) for name, off, size in HEADER}
    for cap, base, _, extra in CAPABILITIES:
        for name, off, size in VIRTIO_PCI_CAP + extra:
            table[f"{cap}.{name}"] = (base + off, size)
    return table


FIELDS = _field_table()
CAP_OFFSET = {cap: base for cap, base, _, _ in CAPABILITIES}

# Word indices (offset / 4) the config-data port treats specially.
BAR0_WORD = FIELDS["bar0"][0] // 4
OTHER_BAR_WORDS = range(FIELDS["bar1"][0] // 4, FIELDS["cardbus_cis_ptr"][0] // 4 + 1)
ROM_WORD = FIELDS["expansion_rom_addr"][0] // 4
CACHELINE_WORD = FIELDS["cacheline_size"][0] // 4
COMMAND_WORD = FIELDS["command"][0] // 4
WINDOW_CAP_WORDS = (FIELDS["cfg_access.bar"][0] // 4, FIELDS["cfg_access.offset"][0] // 4,
                    FIELDS["cfg_access.length"][0] // 4)
WINDOW_DATA_WORD = FIELDS["cfg_access.pci_cfg_data"][0] // 4

# The seed's PCI class codes per device type: "Linux doesn't care, but it's a good clue
# for people looking at the device."
CLASS_BY_DEVICE_TYPE = {
    virtio.ID_CONSOLE: (0x07, 0x00),   # simple communication controller
    virtio.ID_NET: (0x02, 0x00),       # ethernet controller
    virtio.ID_BLOCK: (0x01, 0x80),     # other mass storage controller
    virtio.ID_RNG: (0xFF, 0x00),       # unassigned class
}

SIZE_MASKS = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFFFFFF}


#L:401 PCI can do 1, 2 and 4 byte reads and writes at any byte offset of a
# 32-bit word (the four data ports 0xCFC-0xCFF). As in the seed's ioread()/iowrite(),
# a wide access at a high offset simply loses the bytes that fall off the word.
def ioread(word, portoff, size):
    return (word >> (portoff * 8)) & SIZE_MASKS[size]


def iowrite(word, portoff, size, value, writable=0xFFFFFFFF):
    """Merge `value` into `word` at byte `portoff`; only `writable` bits may change."""
    mask = (SIZE_MASKS[size] << (portoff * 8)) & writable & 0xFFFFFFFF
    return (word & ~mask) | ((value << (portoff * 8)) & mask)


class PciConfig:
    """152 bytes of config space, readable by field name or by 32-bit word."""

    def __init__(self, name="device"):
        self.name = name
        self.space = bytearray(CONFIG_SIZE)
        self.bar0_size = 0          # the seed's mmio_size: bytes of BAR0 in use
        self.bar_sizes = {}         # extra sized BARs (1-5) a backend adds: index -> bytes
        self._extra_caps = []       # (first word, last word, on_write) of added capabilities

    def __getitem__(self, field):
        off, size = FIELDS[field]
        return int.from_bytes(self.space[off:off + size], "little")

    def __setitem__(self, field, value):
        off, size = FIELDS[field]
        self.space[off:off + size] = value.to_bytes(size, "little")

    def word(self, reg):
        return int.from_bytes(self.space[reg * 4:reg * 4 + 4], "little")

    def set_word(self, reg, value):
        self.space[reg * 4:reg * 4 + 4] = (value & 0xFFFFFFFF).to_bytes(4, "little")

    def read(self, reg, portoff, size):
        return ioread(self.word(reg), portoff, size)

    #L:402 What the guest may write. Almost nothing: "PCI uses a weird way to
    # determine the BAR size: the OS writes all 1's, and sees which ones stick", so
    # BAR0 keeps only the bits above its size. The other BARs (and, as in the seed,
    # the word after them) and the expansion ROM are scratch; cacheline size and
    # latency timer may change (unlike the seed, a byte write cannot reach
    # header_type or bist beside them); 16-bit command writes are ignored. Of the
    # capabilities, 4.1.4.1: "The driver MUST NOT write into any field of the
    # capability structure, with the exception of those with cap_type
    # VIRTIO_PCI_CAP_PCI_CFG": its bar, offset and length. Anything else is refused
    # (the caller turns False into the seed's "Attempt to write to port").
    def write(self, reg, portoff, size, value):
        bar_size = self._bar_size(reg)
        if bar_size is not None:
            word = iowrite(self.word(reg), portoff, size, value)
            low_bits = 1
            while low_bits < bar_size:
                low_bits <<= 1
            self.set_word(reg, word & ~(low_bits - 1))
            return True
        for first, last, on_write in self._extra_caps:
            if first <= reg <= last:
                return bool(on_write and on_write(self, reg, portoff, size, value))
        if reg in OTHER_BAR_WORDS or reg == ROM_WORD or reg in WINDOW_CAP_WORDS:
            self.set_word(reg, iowrite(self.word(reg), portoff, size, value))
            return True
        if reg == CACHELINE_WORD:
            self.set_word(reg, iowrite(self.word(reg), portoff, size, value, writable=0xFFFF))
            return True
        if reg == COMMAND_WORD and size == 2:
            return True
        return False

    def _bar_size(self, reg):
        if reg == BAR0_WORD:
            return self.bar0_size
        return self.bar_sizes.get(reg - BAR0_WORD)

    #L:405 An extension point the seed did not need: a backend that offers more than
    # the seed did (KVM's MSI-X: a capability, and a table in another BAR) appends a
    # capability after ours and links it at the end of the chain. Its bytes are
    # read like any others; writes to it go to `on_write(config, reg, portoff, size,
    # value) -> bool` (False: refused), and only there.
    def add_capability(self, cap_id, body=b"", on_write=None):
        """Append a capability (id, next, then `body`); return its offset."""
        at = (len(self.space) + 3) & ~3
        length = (2 + len(body) + 3) & ~3
        if at + length > 256:
            raise ValueError("no room left in the 256 bytes of config space")
        self.space.extend(bytes(at + length - len(self.space)))
        self.space[at] = cap_id
        self.space[at + 2:at + 2 + len(body)] = body
        pos = self["capabilities"]
        if pos == 0:
            self["capabilities"] = at
            self["status"] |= PCI_STATUS_CAP_LIST
        else:
            while self.space[pos + 1]:
                pos = self.space[pos + 1]
            self.space[pos + 1] = at
        self._extra_caps.append((at // 4, (at + length) // 4 - 1, on_write))
        return at

    #L:403 The PCI_CFG window is a backdoor to BAR0 through config space: the driver
    # sets cap.bar, cap.offset and cap.length, then touches pci_cfg_data. "We can get
    # invalid combinations of values while they're writing, so we only fault if they
    # try to write with some invalid bar/offset/length": BAR0 only, inside it, 1, 2 or
    # 4 bytes, and 4.1.4.7.2: "The driver MUST NOT write a cap.offset which is not a
    # multiple of cap.length (ie. all accesses MUST be aligned)."
    def valid_bar_access(self):
        bar, offset, length = (self["cfg_access.bar"], self["cfg_access.offset"],
                               self["cfg_access.length"])
        if bar != 0:
            return False
        if offset >= self.bar0_size or offset + length > self.bar0_size:
            return False
        if length not in (1, 2, 4):
            return False
        return offset % length == 0


def _init_cap(config, cap, cfg_type, bar_offset, bar_bytes, next_cap):
    size = next(size for name, _, size, _ in CAPABILITIES if name == cap)
    config[f"{cap}.cap_vndr"] = PCI_CAP_ID_VNDR
    config[f"{cap}.cap_next"] = CAP_OFFSET[next_cap] if next_cap else 0
    config[f"{cap}.cap_len"] = size
    config[f"{cap}.cfg_type"] = cfg_type
    config[f"{cap}.bar"] = 0
    config[f"{cap}.offset"] = bar_offset
    config[f"{cap}.length"] = bar_bytes


#L:404 init_pci_config(), as the virtio 1.0 standard (and PCI) define it. The BAR0
# layout comes from the transport (L:410): common config, then the 16-bit notify
# register, the ISR byte, a padding byte, then the device's own config.
# 4.1.2.1: "Devices MUST have the PCI Vendor ID 0x1AF4", "... PCI Device ID calculated
# by adding 0x1040 to the Virtio Device ID"; "Non-transitional devices SHOULD have a PCI
# Revision ID of 1 or higher" and "a PCI Subsystem Device ID of 0x40 or higher".
# 4.1.4.4.1: "The device MUST either present notify_off_multiplier as an even power of
# 2, or present notify_off_multiplier as 0": 0, so every queue kicks the same register.
# The device cap is only sewn into the chain when the device has config to show
# (4.1.4.6: "The device MUST present at least one VIRTIO_PCI_CAP_DEVICE_CFG capability
# for any device type which has a device-specific configuration").
def virtio_pci_config(device_type, irq_line, layout, config_len, bar0_addr, name="device"):
    """Build the config space of a virtio device; `layout` maps region -> (offset, size)."""
    config = PciConfig(name)
    config["vendor_id"] = PCI_VENDOR_ID_REDHAT_QUMRANET
    config["device_id"] = VIRTIO_PCI_DEVICE_ID_BASE + device_type
    config["class"], config["subclass"] = CLASS_BY_DEVICE_TYPE.get(device_type, (0xFF, 0x00))
    config["revid"] = 1
    config["subsystem_device_id"] = 0x40
    config["irq_line"] = irq_line           # our dummy interrupt controller's line
    config["status"] = PCI_STATUS_CAP_LIST
    config["capabilities"] = CAP_OFFSET["common"]
    _init_cap(config, "common", VIRTIO_PCI_CAP_COMMON_CFG, *layout["common"], "notify")
    _init_cap(config, "notify", VIRTIO_PCI_CAP_NOTIFY_CFG, *layout["notify"], "isr")
    _init_cap(config, "isr", VIRTIO_PCI_CAP_ISR_CFG, *layout["isr"], "cfg_access")
    _init_cap(config, "cfg_access", VIRTIO_PCI_CAP_PCI_CFG, 0, 0, None)
    _init_cap(config, "device", VIRTIO_PCI_CAP_DEVICE_CFG, layout["device"][0], 0, None)
    if config_len:
        config["cfg_access.cap_next"] = CAP_OFFSET["device"]
        config["device.length"] = config_len
    config.bar0_size = layout["device"][0] + config_len
    # The MMIO window is a naturally aligned power of two: its low 4 bits are 0.
    config["bar0"] = bar0_addr
    return config


def init_pci_host_bridge():
    """Linux expects a PCI host bridge: ours is a dummy, and first on the bus."""
    config = PciConfig("PCI Host Bridge")
    config["class"] = 0x06      # bridge
    config["subclass"] = 0x00   # host bridge
    return config
