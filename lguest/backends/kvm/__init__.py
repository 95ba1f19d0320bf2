"""The KVM backend (L:600 onwards): the same devices, on /dev/kvm."""

from .backend import KvmBackend, is_pvm_host, warn_if_pvm

__all__ = ["KvmBackend", "is_pvm_host", "warn_if_pvm"]
