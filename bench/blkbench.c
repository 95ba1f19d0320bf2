/* The guest half of bench/blk.py: block I/O on a virtio disk from inside a UML guest.
 *
 * Compiled at bench time with `gcc -static` and put into the guest's initramfs (busybox
 * has no fio, and a shell loop of dd costs a fork per request, which would measure
 * fork, not the disk). Every phase prints "<phase>-start" and "<phase>-end <ops> <ns>"
 * on stdout with write(2), unbuffered: the host times the phase from when those lines
 * arrive (its clock), and the guest's own count and clock are printed for a cross-check.
 *
 *   blkbench DEV READ_MB WRITE_MB RAND_SECONDS FLUSH_SECONDS [QD]
 *   blkbench pairs DEV_A DEV_B SLICE_SECONDS PAIRS QD        (bench/blk_pairs.py)
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
 *
 * pairs: two disks, one per back-end, read in turns. For each queue depth (1, then QD)
 * it runs PAIRS pairs of slices: a slice is qdread's random reads for SLICE_SECONDS on
 * one disk with `depth` threads. A pair reads A then B, the next pair B then A (ABBA),
 * so a slow stretch of the host lands on both back-ends alike; only one disk is read at
 * a time, so the idle back-end sleeps in poll() and takes no CPU from the busy one.
 * Each slice prints "s DEV DEPTH" before and "e DEV DEPTH OPS NS" after, so the host can
 * read each back-end's CPU time around it. A first short slice on each disk, not
 * printed, warms the guest's threads and both back-ends' rings.
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

/* qd readers on fd for rand_ns, each with one pread in flight; returns their ops. */
static uint64_t read_threads(int fd, uint64_t blocks, int qd, uint64_t rand_ns, uint64_t seed)
{
	struct reader *rs = calloc(qd, sizeof *rs);
	if (!rs)
		die("calloc");
	uint64_t t = now_ns(), ops = 0;
	for (int i = 0; i < qd; i++) {
		rs[i] = (struct reader){ .fd = fd, .blocks = blocks, .until_ns = t + rand_ns,
					 .seed = seed * (i + 2) | 1 };
		if (pthread_create(&rs[i].thread, 0, reader_run, &rs[i]))
			die("pthread_create");
	}
	for (int i = 0; i < qd; i++) {
		pthread_join(rs[i].thread, 0);
		ops += rs[i].ops;
	}
	free(rs);
	return ops;
}

static void qdread(int fd, uint64_t blocks, int qd, uint64_t rand_ns)
{
	mark("qdread", "start", 0, 0);
	uint64_t t = now_ns();
	uint64_t ops = read_threads(fd, blocks, qd, rand_ns, 0x9E3779B97F4A7C15ull);
	mark("qdread", "end", ops, now_ns() - t);
}

static void say(const char *line, int n)
{
	if (n <= 0 || write(1, line, n) != n)
		exit(3);
}

/* One slice of the pairs mode; its lines printed if `name` is set. */
static void slice(int fd, uint64_t blocks, const char *name, int depth, uint64_t ns, uint64_t seed)
{
	char line[128];
	if (name)
		say(line, snprintf(line, sizeof line, "s %s %d\n", name, depth));
	uint64_t t = now_ns(), ops = read_threads(fd, blocks, depth, ns, seed);
	if (name)
		say(line, snprintf(line, sizeof line, "e %s %d %llu %llu\n", name, depth,
				   (unsigned long long)ops, (unsigned long long)(now_ns() - t)));
}

static int pairs_main(int argc, char **argv)
{
	if (argc != 7) {
		fprintf(stderr, "usage: blkbench pairs DEV_A DEV_B SLICE_S PAIRS QD\n");
		return 1;
	}
	uint64_t slice_ns = (uint64_t)(atof(argv[4]) * 1e9);
	int pairs = atoi(argv[5]), qd = atoi(argv[6]);
	if (pairs < 1 || qd < 1 || qd > 256 || slice_ns == 0) {
		fprintf(stderr, "blkbench pairs: need SLICE_S > 0, PAIRS >= 1, QD 1..256\n");
		return 1;
	}
	int fds[2];
	uint64_t blocks[2];
	for (int d = 0; d < 2; d++) {
		uint64_t size;
		fds[d] = open_dev(argv[2 + d], O_RDONLY | O_DIRECT);
		if (ioctl(fds[d], BLKGETSIZE64, &size))
			die("BLKGETSIZE64");
		blocks[d] = size / 4096;
		if (blocks[d] == 0) {
			fprintf(stderr, "%s is smaller than 4 KiB\n", argv[2 + d]);
			return 1;
		}
	}
	const char *names[2] = { "A", "B" };
	int depths[2] = { 1, qd };
	uint64_t seed = 0x9E3779B97F4A7C15ull;
	for (int d = 0; d < 2; d++)
		slice(fds[d], blocks[d], 0, qd, slice_ns / 4, seed++);
	for (int k = 0; k < (qd == 1 ? 1 : 2); k++)
		for (int p = 0; p < pairs; p++)
			for (int j = 0; j < 2; j++) {
				int d = (p + j) % 2;        /* A B, B A, A B, ... */
				slice(fds[d], blocks[d], names[d], depths[k], slice_ns, seed++);
			}
	return 0;
}

int main(int argc, char **argv)
{
	if (argc > 1 && !strcmp(argv[1], "pairs"))
		return pairs_main(argc, argv);
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
