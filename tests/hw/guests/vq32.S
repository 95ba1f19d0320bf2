# A guest-side virtqueue exchange done by hand: one device-writable buffer of 16
# bytes (at EDI) in descriptor 0 of the ring whose descriptor table, available ring
# and used ring are at EBX, ECX, EDX; publish it, kick queue 0 at the notify address
# in ESI, wait for the used index to move, then report the used length (port 0x10)
# and the buffer's first word (port 0x11).
	.code32
	.globl start
start:
	mov	%edi, (%ebx)		# desc[0].addr
	movl	$0, 4(%ebx)
	movl	$16, 8(%ebx)		# desc[0].len
	movw	$2, 12(%ebx)		# desc[0].flags = VIRTQ_DESC_F_WRITE
	movw	$0, 14(%ebx)		# desc[0].next
	movw	$0, 4(%ecx)		# avail.ring[0] = head 0
	movw	$1, 2(%ecx)		# avail.idx = 1 (x86 stores are ordered: no fence needed)
	movw	$0, (%esi)		# notify: queue 0
wait_used:
	cmpw	$0, 2(%edx)		# used.idx
	je	wait_used
	mov	8(%edx), %eax		# used.ring[0].len
	out	%eax, $0x10
	mov	(%edi), %eax
	out	%eax, $0x11
	hlt
