/* The guest half of bench/blk.py: block I/O on a virtio disk from inside a UML guest.
 *
 * Compiled at bench time with `gcc -static` and put into the guest's initramfs (busybox
 * has no fio, and a shell loop of dd costs a fork per request, which would measure
 * fork, not the disk). Every phase prints "<phase>-start" and "<phase>-end <ops> <ns>"
 * on stdout with write(2), unbuffered: the host times the phase from when those lines
 * arrive (its clock), and the guest's own count and clock are printed for a cross-check.
 *
 *   blkbench DEV READ_MB WRITE_MB RAND_SECONDS FLUSH_SECONDS [QD]
 *
 * seqread:  READ_MB of 1 MiB O_DIRECT reads, sequential, wrapping at the end of DEV.
 * seqwrite: WRITE_MB of 1 MiB O_DIRECT writes, sequential.
 * writesync: one fdatasync after them (timed apart: it is mostly the host's disk).
 * randread: 4 KiB O_DIRECT reads at random aligned offsets, one at a time (queue depth
 *           1), for RAND_SECONDS of guest time.
 * qdread:   the same with QD threads (default 16), each with one pread in flight, so
 *           the block layer keeps QD requests on the ring (no libaio or io_uring
 *           needed: a blocked thread is a request in flight), for RAND_SECONDS.
 * flush:    fdatasync() on DEV in a loop for FLUSH_SECONDS: Linux's blkdev_fsync sends
 *           one VIRTIO_BLK_T_FLUSH each time, with nothing else in flight.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <linux/fs.h>

#define MIB (1024 * 1024)

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + ts.tv_nsec;
}

static void mark(const char *phase, const char *what, uint64_t ops, uint64_t ns)
{
	char line[128];
	int n = what[0] == 's'
		? snprintf(line, sizeof line, "%s-start\n", phase)
		: snprintf(line, sizeof line, "%s-end %llu %llu\n", phase,
			   (unsigned long long)ops, (unsigned long long)ns);
	if (write(1, line, n) != n)
		exit(3);
}

static void die(const char *what)
{
	perror(what);
	exit(2);
}

static int open_dev(const char *dev, int flags)
{
	int fd = open(dev, flags);
	if (fd < 0)
		die(dev);
	return fd;
}

struct reader {
	pthread_t thread;
	int fd;
	uint64_t blocks, seed, until_ns, ops;
};

/* One of the qdread threads: 4 KiB O_DIRECT reads at random offsets until the deadline. */
static void *reader_run(void *arg)
{
	struct reader *r = arg;
	unsigned char *buf;
	uint64_t x = r->seed;
	if (posix_memalign((void **)&buf, 4096, 4096))
		die("posix_memalign");
	do {
		for (int k = 0; k < 16; k++, r->ops++) {
			x ^= x << 13; x ^= x >> 7; x ^= x << 17;
			if (pread(r->fd, buf, 4096, (x % r->blocks) * 4096) != 4096)
				die("qdread");
		}
	} while (now_ns() < r->until_ns);
	free(buf);
	return 0;
}

static void qdread(int fd, uint64_t blocks, int qd, uint64_t rand_ns)
{
	struct reader *rs = calloc(qd, sizeof *rs);
	if (!rs)
		die("calloc");
	mark("qdread", "start", 0, 0);
	uint64_t t = now_ns(), ops = 0;
	for (int i = 0; i < qd; i++) {
		rs[i] = (struct reader){ .fd = fd, .blocks = blocks, .until_ns = t + rand_ns,
					 .seed = 0x9E3779B97F4A7C15ull * (i + 2) };
		if (pthread_create(&rs[i].thread, 0, reader_run, &rs[i]))
			die("pthread_create");
	}
	for (int i = 0; i < qd; i++) {
		pthread_join(rs[i].thread, 0);
		ops += rs[i].ops;
	}
	mark("qdread", "end", ops, now_ns() - t);
	free(rs);
}

int main(int argc, char **argv)
{
	if (argc != 6 && argc != 7) {
		fprintf(stderr, "usage: blkbench DEV READ_MB WRITE_MB RAND_S FLUSH_S [QD]\n");
		return 1;
	}
	int qd = argc == 7 ? atoi(argv[6]) : 16;
	if (qd < 1 || qd > 256) {
		fprintf(stderr, "QD must be 1..256\n");
		return 1;
	}
	const char *dev = argv[1];
	uint64_t read_mb = strtoull(argv[2], 0, 0), write_mb = strtoull(argv[3], 0, 0);
	uint64_t rand_ns = (uint64_t)(atof(argv[4]) * 1e9), flush_ns = (uint64_t)(atof(argv[5]) * 1e9);
	unsigned char *buf;
	if (posix_memalign((void **)&buf, 4096, MIB))
		die("posix_memalign");
	memset(buf, 0xA5, MIB);

	int fd = open_dev(dev, O_RDONLY | O_DIRECT);
	uint64_t size;
	if (ioctl(fd, BLKGETSIZE64, &size))
		die("BLKGETSIZE64");
	uint64_t mbs = size / MIB, t;
	if (mbs == 0) {
		fprintf(stderr, "%s is smaller than 1 MiB\n", dev);
		return 1;
	}

	mark("seqread", "start", 0, 0);
	t = now_ns();
	for (uint64_t i = 0; i < read_mb; i++)
		if (pread(fd, buf, MIB, (i % mbs) * MIB) != MIB)
			die("seqread");
	mark("seqread", "end", read_mb, now_ns() - t);

	uint64_t blocks = size / 4096, x = 0x9E3779B97F4A7C15ull, ops = 0;
	mark("randread", "start", 0, 0);
	t = now_ns();
	do {
		for (int k = 0; k < 64; k++, ops++) {
			x ^= x << 13; x ^= x >> 7; x ^= x << 17;     /* xorshift64 */
			if (pread(fd, buf, 4096, (x % blocks) * 4096) != 4096)
				die("randread");
		}
	} while (now_ns() - t < rand_ns);
	mark("randread", "end", ops, now_ns() - t);
	qdread(fd, blocks, qd, rand_ns);
	close(fd);

	fd = open_dev(dev, O_WRONLY | O_DIRECT);
	mark("seqwrite", "start", 0, 0);
	t = now_ns();
	for (uint64_t i = 0; i < write_mb; i++)
		if (pwrite(fd, buf, MIB, (i % mbs) * MIB) != MIB)
			die("seqwrite");
	mark("seqwrite", "end", write_mb, now_ns() - t);
	/* Apart: this flush writes the host's dirty pages to its disk, whose speed (and
	 * the rest of the machine's writeback) would otherwise swamp the back-end's. */
	mark("writesync", "start", 0, 0);
	t = now_ns();
	if (fdatasync(fd))
		die("fdatasync");
	mark("writesync", "end", 1, now_ns() - t);

	ops = 0;
	mark("flush", "start", 0, 0);
	t = now_ns();
	do {
		for (int k = 0; k < 16; k++, ops++)
			if (fdatasync(fd))
				die("flush");
	} while (now_ns() - t < flush_ns);
	mark("flush", "end", ops, now_ns() - t);
	close(fd);
	return 0;
}
