"""The virtio devices, sans-I/O: what each device means, not how bytes reach the host."""
