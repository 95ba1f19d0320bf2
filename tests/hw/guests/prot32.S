# 32-bit protected mode (the 32-bit boot protocol: flat segments, ESI = boot_params).
	.code32
	.globl start
start:
	mov	$0x12345678, %eax
	out	%eax, $0x10		# 4-byte OUT
	in	$0x12, %ax		# 2-byte IN: the test answers
	movw	%ax, 0x2000		# store it where the test can see it
	mov	%esi, %eax
	out	%eax, $0x14		# ESI as the vCPU was entered
	hlt
