# ECX times: with EDI = 0, write DX (16 bits) to the MMIO address in EBX (a virtio
# notify, for the ioeventfd test); with EDI != 0, `out` to port 0x80 (an exit each).
# Then say done on port 0x10.
	.code32
	.globl start
start:
	test	%edi, %edi
	jnz	outloop
mmioloop:
	movw	%dx, (%ebx)
	dec	%ecx
	jnz	mmioloop
	out	%al, $0x10
	hlt
outloop:
	out	%al, $0x80
	dec	%ecx
	jnz	outloop
	out	%al, $0x10
	hlt
