/* Architecture-independent stand-in for <asm/types.h>, so the BPF programs
 * build with the UAPI headers of linux-libc-dev on any host architecture
 * without the multiarch include directory. */
#include <asm-generic/types.h>
