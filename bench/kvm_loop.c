/* The physical limit of a port-I/O exit round trip here: KVM_RUN, exit, KVM_RUN again,
 * in C with nothing in between; and the same guest's ioeventfd kicks (an MMIO write the
 * kernel turns into an eventfd signal without leaving KVM_RUN). bench/kvm.py runs the
 * same guest bytes through the Python launcher (bench/kvm_exits.py's timed_run).
 *
 *   kvm_loop GUEST.bin N   ->  "exits N NS" and "kicks N NS" lines
 *
 * GUEST.bin is tests/hw/guests/loop32.S linked at 0x1000: with EDI != 0, ECX times
 * `out %al, $0x80` (each an exit); with EDI = 0, ECX 16-bit writes of DX to [EBX]
 * (bound to an eventfd); then `out %al, $0x10` and hlt. It runs in flat 32-bit
 * protected mode set up directly in the segment registers (no GDT is ever loaded).
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

#define NOTIFY (16u << 20)

static int kvm, vm, vcpu;
static struct kvm_run *run;

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

static void flat(struct kvm_segment *s, int selector, int type)
{
	memset(s, 0, sizeof *s);
	s->base = 0;
	s->limit = 0xffffffff;
	s->selector = selector;
	s->type = type;
	s->present = 1;
	s->s = 1;
	s->db = 1;
	s->g = 1;
}

/* Run loop32 from its start with the given registers; return ns until its port 0x10. */
static uint64_t run_loop(uint32_t ecx, uint32_t edi, uint32_t ebx, long *exits)
{
	struct kvm_sregs sregs;
	struct kvm_regs regs;
	if (ioctl(vcpu, KVM_GET_SREGS, &sregs) < 0)
		die("KVM_GET_SREGS");
	flat(&sregs.cs, 8, 11);
	flat(&sregs.ds, 16, 3);
	sregs.es = sregs.fs = sregs.gs = sregs.ss = sregs.ds;
	sregs.cr0 |= 1;
	if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0)
		die("KVM_SET_SREGS");
	memset(&regs, 0, sizeof regs);
	regs.rip = 0x1000;
	regs.rflags = 2;
	regs.rcx = ecx;
	regs.rdi = edi;
	regs.rbx = ebx;
	regs.rsp = 0x8000;
	if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0)
		die("KVM_SET_REGS");
	uint64_t t = now_ns(), sum = 0;
	*exits = 0;
	for (;;) {
		if (ioctl(vcpu, KVM_RUN, 0) < 0)
			die("KVM_RUN");
		if (run->exit_reason != KVM_EXIT_IO) {
			fprintf(stderr, "unexpected exit %u\n", run->exit_reason);
			exit(1);
		}
		(*exits)++;
		/* look at the byte written, as a launcher would */
		sum += ((unsigned char *)run)[run->io.data_offset];
		if (run->io.port == 0x10)
			break;
	}
	return now_ns() - t + (sum == 0xdeadbeefdeadull);
}

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: kvm_loop GUEST.bin N\n");
		return 1;
	}
	long n = atol(argv[2]), exits;
	kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm < 0)
		die("/dev/kvm");
	vm = ioctl(kvm, KVM_CREATE_VM, 0);
	if (vm < 0)
		die("KVM_CREATE_VM");
	size_t size = 2u << 20;
	unsigned char *mem = mmap(0, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	int code = open(argv[1], O_RDONLY);
	if (code < 0 || read(code, mem + 0x1000, 0x1000) <= 0)
		die(argv[1]);
	struct kvm_userspace_memory_region region = {
		.slot = 0, .guest_phys_addr = 0, .memory_size = size, .userspace_addr = (uint64_t)mem};
	if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0)
		die("KVM_SET_USER_MEMORY_REGION");
	vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
	if (vcpu < 0)
		die("KVM_CREATE_VCPU");
	int run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
	run = mmap(0, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
	if (run == MAP_FAILED)
		die("mmap kvm_run");

	uint64_t ns = run_loop(n, 1, 0, &exits);
	if (exits != n + 1)
		fprintf(stderr, "expected %ld exits, saw %ld\n", n + 1, exits), exit(1);
	printf("exits %ld %llu\n", n, (unsigned long long)ns);

	int efd = eventfd(0, EFD_CLOEXEC);
	struct kvm_ioeventfd io = {.datamatch = 0, .addr = NOTIFY, .len = 2, .fd = efd,
				   .flags = KVM_IOEVENTFD_FLAG_DATAMATCH};
	if (ioctl(vm, KVM_IOEVENTFD, &io) < 0)
		die("KVM_IOEVENTFD");
	ns = run_loop(n, 0, NOTIFY, &exits);
	uint64_t count;
	if (read(efd, &count, 8) != 8 || count != (uint64_t)n)
		fprintf(stderr, "eventfd counted %llu of %ld\n", (unsigned long long)count, n), exit(1);
	printf("kicks %ld %llu\n", n, (unsigned long long)ns);
	return 0;
}
