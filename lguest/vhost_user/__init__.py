"""vhost-user: serve our virtio devices to another process's guest over a unix socket.

The story starts in protocol.py (L:700).
"""
