"""Queue kicks that never leave the kernel: KVM_IOEVENTFD on each queue's eventfd.

#L:650 The threaded runner (L:900) wakes a queue's thread through an eventfd of its
# own, which it creates when the device goes live and closes at reset. We wrap that
# runner: after it starts, each queue's eventfd is bound with KVM_IOEVENTFD to a
# 2-byte write of the queue's index to the device's notify register (our
# notify_off_multiplier is 0, so all queues share one address and the value tells
# them apart: the ioeventfd datamatch); before it stops (and closes the eventfds),
# the bindings are removed. A kick written that way signals the eventfd inside KVM and
# the vCPU goes on running; any other write to the register (a bad queue index, a
# kick before DRIVER_OK) still exits to the transport, which judges it as before.
"""

from ...devices.base import DeviceRunner

NOTIFY_WIDTH = 2


class IoeventfdRunner(DeviceRunner):
    def __init__(self, inner, vm, notify_address):
        self.__dict__["inner"] = inner
        self.vm = vm
        self.notify_address = notify_address
        self.bound = []

    def start(self, device, interrupt):
        self.inner.start(device, interrupt)
        for qi in range(len(device.queues)):
            fd = self.inner.kick_fd(qi)
            if fd is None:
                continue
            self.vm.ioeventfd(fd, self.notify_address, NOTIFY_WIDTH, datamatch=qi)
            self.bound.append((fd, qi))

    def kick(self, queue_index):
        self.inner.kick(queue_index)

    def stop(self):
        bound, self.bound = self.bound, []
        for fd, qi in bound:
            if self.vm.fd is not None:
                self.vm.ioeventfd(fd, self.notify_address, NOTIFY_WIDTH, datamatch=qi,
                                  deassign=True)
        self.inner.stop()

    # Everything else (on_error, kick_fd, running, errors) is the wrapped runner's.
    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __setattr__(self, name, value):
        if name in ("vm", "notify_address", "bound"):
            self.__dict__[name] = value
        else:
            setattr(self.inner, name, value)
