# 16-bit real mode: port exits of width 1 and 2, an IN whose value lands in AL,
# memory written by the guest (0x2000) and read from the test's write (0x2002).
	.code16
	.globl start
start:
	mov	$0x42, %al
	out	%al, $0x10		# 1-byte OUT: the bus sees 0x42
	in	$0x11, %al		# 1-byte IN: the test answers
	out	%al, $0x12		# ... and we echo what we got
	movw	%ax, 0x2000		# guest -> test through memory
	mov	0x2002, %ax		# test -> guest through memory
	out	%ax, $0x14		# 2-byte OUT of it
	hlt
