# 64-bit long mode through our identity page tables: memory both ways, RSI, and MMIO
# accesses of 1, 2, 4 and 8 bytes at MMIO (an address above RAM, given with --defsym).
	.code64
	.globl start
start:
	mov	0x3000, %rax		# the test wrote a u64 here
	add	$1, %rax
	mov	%rax, 0x3008		# ... and reads it back plus one
	out	%eax, $0x10
	mov	%rsi, %rax
	out	%eax, $0x14		# RSI = boot_params
	movabs	$MMIO, %rbx
	movl	$0xdeadbeef, (%rbx)	# 4-byte MMIO write
	movw	$0x1234, 8(%rbx)	# 2-byte
	movb	$0x56, 12(%rbx)		# 1-byte
	mov	16(%rbx), %rax		# 8-byte MMIO read: the test answers
	out	%eax, $0x18
	shr	$32, %rax
	out	%eax, $0x1c
	movzwl	24(%rbx), %eax		# 2-byte MMIO read
	out	%eax, $0x20
	hlt
