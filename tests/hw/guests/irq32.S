# Interrupts: load an IDT, program the in-kernel PIC (IRQ 0-7 -> vectors 0x20-0x27,
# all masked but IRQ 5), software-enable the local APIC (for MSI, vector 0x40), say
# "ready" on port 0x10, then sti and halt. Each handler reports its vector on port
# 0x12 and ends the run through the exit-status port 0x501 with the vector.
	.code32
	.globl start
start:
	mov	$0x8000, %esp		# a stack in RAM for the interrupt frame
	lidt	idt_desc
	mov	$0x11, %al		# ICW1: edge, cascade, ICW4 follows
	out	%al, $0x20
	mov	$0x20, %al		# ICW2: vector base 0x20
	out	%al, $0x21
	mov	$0x04, %al		# ICW3: slave on IRQ 2
	out	%al, $0x21
	mov	$0x01, %al		# ICW4: 8086 mode
	out	%al, $0x21
	mov	$0xdf, %al		# OCW1: mask all but IRQ 5
	out	%al, $0x21
	movl	$0x1ff, 0xfee000f0	# APIC SVR: software enable, spurious vector 0xff
	out	%al, $0x10		# ready
	sti
idle:
	hlt
	jmp	idle
irq5:
	mov	$0x25, %al
	jmp	report
msi:
	mov	$0x40, %al
report:
	out	%al, $0x12
	mov	$0x501, %dx
	out	%al, %dx
	hlt

	.align 8
idt:
	.fill	0x25, 8, 0
	.word	irq5, 0x10, 0x8e00, 0	# vector 0x25: 32-bit interrupt gate, CS 0x10
	.fill	0x40 - 0x26, 8, 0
	.word	msi, 0x10, 0x8e00, 0	# vector 0x40
idt_end:
idt_desc:
	.word	idt_end - idt - 1
	.long	idt
