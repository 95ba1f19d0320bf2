/* The physical limit of a port-I/O exit round trip here: KVM_RUN, exit, KVM_RUN again,
 * in C with nothing in between, and ioeventfd kicks (a port write the kernel turns into
 * an eventfd signal without leaving KVM_RUN). bench/kvm_exits.py does the same in Python.
 *
 *   kvm_loop EXITS KICK_ROUNDS   ->  "exits N NS" and "kicks N NS" lines
 *
 * The guest is real-mode code at 0x1000 (see kvm_exits.py's CODE): `out dx, al` to port
 * 0x10 forever (each one an exit), and at 0x1100 a `loop` of 65535 `out`s to port 0x20,
 * bound to an eventfd, then `hlt` (one exit per round) and a jump back.
 */
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static const unsigned char exit_code[] = {0xBA, 0x10, 0x00, 0xEE, 0xEB, 0xFD};
static const unsigned char kick_code[] = {0xB9, 0xFF, 0xFF, 0xBA, 0x20, 0x00, 0xEE, 0xE2,
					  0xFD, 0xF4, 0xEB, 0xF4};

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + ts.tv_nsec;
}

static void die(const char *what)
{
	perror(what);
	exit(1);
}

static void start_at(int vcpu, uint64_t rip)
{
	struct kvm_sregs sregs;
	struct kvm_regs regs;
	if (ioctl(vcpu, KVM_GET_SREGS, &sregs) < 0)
		die("KVM_GET_SREGS");
	sregs.cs.base = 0;
	sregs.cs.selector = 0;
	if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0)
		die("KVM_SET_SREGS");
	memset(&regs, 0, sizeof regs);
	regs.rip = rip;
	regs.rflags = 2;
	if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0)
		die("KVM_SET_REGS");
}

int main(int argc, char **argv)
{
	long exits = argc > 1 ? atol(argv[1]) : 100000, rounds = argc > 2 ? atol(argv[2]) : 4;
	int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm < 0)
		die("/dev/kvm");
	int vm = ioctl(kvm, KVM_CREATE_VM, 0);
	if (vm < 0)
		die("KVM_CREATE_VM");
	size_t size = 0x10000;
	unsigned char *mem = mmap(0, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	memcpy(mem + 0x1000, exit_code, sizeof exit_code);
	memcpy(mem + 0x1100, kick_code, sizeof kick_code);
	struct kvm_userspace_memory_region region = {
		.slot = 0, .guest_phys_addr = 0, .memory_size = size, .userspace_addr = (uint64_t)mem};
	if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0)
		die("KVM_SET_USER_MEMORY_REGION");
	int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
	if (vcpu < 0)
		die("KVM_CREATE_VCPU");
	int run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
	struct kvm_run *run = mmap(0, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
	if (run == MAP_FAILED)
		die("mmap kvm_run");

	start_at(vcpu, 0x1000);
	uint64_t t = now_ns(), sum = 0;
	for (long i = 0; i < exits; i++) {
		if (ioctl(vcpu, KVM_RUN, 0) < 0)
			die("KVM_RUN");
		if (run->exit_reason != KVM_EXIT_IO || run->io.port != 0x10)
			fprintf(stderr, "unexpected exit %u\n", run->exit_reason), exit(1);
		sum += ((unsigned char *)run)[run->io.data_offset];     /* look at the value, as a launcher would */
	}
	printf("exits %ld %llu\n", exits, (unsigned long long)(now_ns() - t));

	int efd = eventfd(0, EFD_CLOEXEC);
	struct kvm_ioeventfd io = {.addr = 0x20, .len = 1, .fd = efd, .flags = KVM_IOEVENTFD_FLAG_PIO};
	if (ioctl(vm, KVM_IOEVENTFD, &io) < 0)
		die("KVM_IOEVENTFD");
	start_at(vcpu, 0x1100);
	t = now_ns();
	for (long i = 0; i < rounds; i++) {
		if (ioctl(vcpu, KVM_RUN, 0) < 0)
			die("KVM_RUN");
		if (run->exit_reason != KVM_EXIT_HLT)
			fprintf(stderr, "unexpected exit %u\n", run->exit_reason), exit(1);
	}
	uint64_t ns = now_ns() - t, count;
	if (read(efd, &count, 8) != 8)
		die("eventfd");
	printf("kicks %llu %llu\n", (unsigned long long)count, (unsigned long long)ns);
	return sum == 12345678 ? 2 : 0;
}
