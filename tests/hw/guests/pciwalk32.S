# Walk PCI configuration space through 0xCF8/0xCFC as Linux's pci_find_capability()
# does: read slot 1's vendor/device id, the capabilities pointer, then each
# capability's first word (id, next, len, cfg_type), reporting each on a port.
	.code32
	.globl start
start:
	mov	$0x80000800, %eax	# enable | bus 0 | device 1 | function 0 | register 0
	mov	$0xcf8, %dx
	out	%eax, %dx
	mov	$0xcfc, %dx
	in	%dx, %eax
	out	%eax, $0x10		# vendor | device << 16
	mov	$0x80000834, %eax	# register 0x34: capabilities pointer
	mov	$0xcf8, %dx
	out	%eax, %dx
	mov	$0xcfc, %dx
	in	%dx, %al
	movzbl	%al, %ebx
next_cap:
	test	%ebx, %ebx
	jz	done
	mov	%ebx, %eax
	and	$0xfc, %eax
	or	$0x80000800, %eax
	mov	$0xcf8, %dx
	out	%eax, %dx
	mov	$0xcfc, %dx
	in	%dx, %eax		# cap id | next << 8 | len << 16 | cfg_type << 24
	out	%eax, $0x11
	movzbl	%ah, %ebx
	jmp	next_cap
done:
	hlt
