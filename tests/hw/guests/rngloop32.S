# EBP virtio requests in a row, each a whole round trip: descriptor 0 (16 device-
# writable bytes) points at the next 16 bytes of the buffer area at EDI; publish it in
# the available ring, kick queue 0 (a 16-bit write the host binds to an ioeventfd: no
# exit to Python), wait until the used index catches up, and append the used length to
# the log at ESI. Then report the count on port 0x10, the interrupts taken on
# port 0x11, and end with status 0 (port 0x501:
# with the irqchip a hlt would wait in the kernel).
#
# The ring's addresses come as symbols (build.assemble(symbols=...)) so every register
# is free for the loop: DESC, AVAIL, USED, NOTIFY, QMASK (queue size - 1), and IRQ, the
# device's INTx line, and ISR, the address of the device's ISR status byte. With
# WAITIRQ=1 the guest sleeps in hlt until the device's interrupt (PIC, vector 0x20 +
# IRQ) instead of spinning on the used index; its handler reads ISR, as Linux's
# vp_interrupt does, which de-asserts the line (it is a level, held until that read).
	.code32
	.globl start
	IRQS = 0x7000			# interrupts taken (RAM starts zeroed), under the stack
start:
	mov	$0x8000, %esp		# a stack for the interrupt frame
	movl	$0, DESC+4		# desc[0].addr, high half
	movl	$16, DESC+8		# desc[0].len
	movw	$2, DESC+12		# desc[0].flags = VIRTQ_DESC_F_WRITE
	movw	$0, DESC+14
.if WAITIRQ
	lidt	idt_desc
	mov	$0x11, %al		# PIC ICW1..4: vectors 0x20-0x27, 8086 mode
	out	%al, $0x20
	mov	$0x20, %al
	out	%al, $0x21
	mov	$0x04, %al
	out	%al, $0x21
	mov	$0x01, %al
	out	%al, $0x21
	mov	$~(1 << IRQ) & 0xff, %al	# OCW1: only the device's line
	out	%al, $0x21
.endif
	xor	%ecx, %ecx		# requests posted so far
next:
	mov	%edi, DESC		# desc[0].addr: this request's 16 bytes
	mov	%ecx, %eax
	and	$QMASK, %eax		# this request's ring slot
	movw	$0, AVAIL+4(,%eax,2)	# avail.ring[slot] = head 0
	inc	%ecx
	movw	%cx, AVAIL+2		# avail.idx (x86 stores are ordered: no fence)
	movw	$0, NOTIFY		# kick queue 0
.if WAITIRQ
wait:
	cli				# look, then sleep with no window for the interrupt
	cmpw	%cx, USED+2		# to slip in between (sti's shadow covers the hlt)
	je	served
	sti
	hlt
	jmp	wait
.else
wait:
	cmpw	%cx, USED+2		# used.idx
	jne	wait
.endif
served:
	mov	USED+8(,%eax,8), %edx	# used.ring[slot].len
	mov	%edx, (%esi)
	add	$4, %esi
	add	$16, %edi
	cmp	%ebp, %ecx
	jne	next
	mov	%ecx, %eax
	out	%eax, $0x10
	mov	IRQS, %eax		# and how many interrupts woke it (port 0x11)
	out	%eax, $0x11
	mov	$0x501, %dx
	xor	%al, %al
	out	%al, %dx
	hlt

.if WAITIRQ
irq:					# woke the hlt: read ISR, EOI, back to the loop's look
	push	%eax
	movb	ISR, %al		# reading ISR lowers the INTx line (an exit to us)
	mov	$0x20, %al		# non-specific EOI to the PIC
	out	%al, $0x20
	pop	%eax
	incl	IRQS
	add	$12, %esp		# drop the frame instead of iret, which KVM-PVM's
	jmp	wait			# ring-0 emulator cannot run (IF stays 0, as wait wants)

	.align 8
idt:
	.fill	0x20 + IRQ, 8, 0
	.word	irq, 0x10, 0x8e00, 0	# 32-bit interrupt gate, CS 0x10
idt_end:
idt_desc:
	.word	idt_end - idt - 1
	.long	idt
.endif
