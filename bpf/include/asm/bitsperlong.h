/* Stand-in for <asm/bitsperlong.h>: BPF is a 64-bit target. */
#include <asm-generic/bitsperlong.h>
