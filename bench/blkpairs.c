/* The guest half of bench/blk_pairs.py: two virtio disks, one per back-end, read in turns.
 *
 *   blkpairs DEV_A DEV_B SLICE_SECONDS PAIRS QD
 *
 * For each queue depth (1, then QD) it runs PAIRS pairs of slices: a slice is 4 KiB
 * O_DIRECT reads at random aligned offsets for SLICE_SECONDS on one disk, with `depth`
 * threads each keeping one pread in flight (as blkbench's qdread). A pair reads A then B,
 * the next pair B then A (ABBA), so a slow stretch of the host lands on both back-ends
 * alike: the ratio of a pair is measured over a second or so of the same machine, not
 * over two guests booted a minute apart. Only one disk is read at a time, so the idle
 * back-end sleeps in poll() and takes no CPU from the busy one.
 *
 * Each slice prints "s DEV DEPTH" before and "e DEV DEPTH OPS NS" after, with write(2),
 * so the host can read each back-end's CPU time around it. A first short slice on each
 * disk, not printed, warms the guest's threads and both back-ends' rings.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <linux/fs.h>

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + ts.tv_nsec;
}

static void die(const char *what)
{
	perror(what);
	exit(2);
}

static void say(const char *line, int n)
{
	if (n <= 0 || write(1, line, n) != n)
		exit(3);
}

struct reader {
	pthread_t thread;
	int fd;
	uint64_t blocks, seed, until_ns, ops;
};

static void *reader_run(void *arg)
{
	struct reader *r = arg;
	unsigned char *buf;
	uint64_t x = r->seed;
	if (posix_memalign((void **)&buf, 4096, 4096))
		die("posix_memalign");
	do {
		for (int k = 0; k < 8; k++, r->ops++) {
			x ^= x << 13; x ^= x >> 7; x ^= x << 17;
			if (pread(r->fd, buf, 4096, (x % r->blocks) * 4096) != 4096)
				die("pread");
		}
	} while (now_ns() < r->until_ns);
	free(buf);
	return 0;
}

/* One slice: `depth` readers on fd for slice_ns; prints its lines if `name` is set. */
static void slice(int fd, uint64_t blocks, const char *name, int depth, uint64_t slice_ns,
		  uint64_t seed)
{
	static struct reader rs[256];
	char line[128];
	if (name)
		say(line, snprintf(line, sizeof line, "s %s %d\n", name, depth));
	uint64_t t = now_ns(), ops = 0;
	for (int i = 0; i < depth; i++) {
		rs[i] = (struct reader){ .fd = fd, .blocks = blocks, .until_ns = t + slice_ns,
					 .seed = seed * (i + 2) | 1 };
		if (depth == 1)
			reader_run(&rs[0]);
		else if (pthread_create(&rs[i].thread, 0, reader_run, &rs[i]))
			die("pthread_create");
	}
	for (int i = 0; i < depth; i++) {
		if (depth > 1)
			pthread_join(rs[i].thread, 0);
		ops += rs[i].ops;
	}
	uint64_t ns = now_ns() - t;
	if (name)
		say(line, snprintf(line, sizeof line, "e %s %d %llu %llu\n", name, depth,
				   (unsigned long long)ops, (unsigned long long)ns));
}

int main(int argc, char **argv)
{
	if (argc != 6) {
		fprintf(stderr, "usage: blkpairs DEV_A DEV_B SLICE_S PAIRS QD\n");
		return 1;
	}
	uint64_t slice_ns = (uint64_t)(atof(argv[3]) * 1e9);
	int pairs = atoi(argv[4]), qd = atoi(argv[5]);
	if (pairs < 1 || qd < 1 || qd > 256 || slice_ns == 0) {
		fprintf(stderr, "blkpairs: need SLICE_S > 0, PAIRS >= 1, QD 1..256\n");
		return 1;
	}
	int fds[2];
	uint64_t blocks[2];
	for (int d = 0; d < 2; d++) {
		uint64_t size;
		fds[d] = open(argv[1 + d], O_RDONLY | O_DIRECT);
		if (fds[d] < 0)
			die(argv[1 + d]);
		if (ioctl(fds[d], BLKGETSIZE64, &size))
			die("BLKGETSIZE64");
		blocks[d] = size / 4096;
		if (blocks[d] == 0) {
			fprintf(stderr, "%s is smaller than 4 KiB\n", argv[1 + d]);
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
