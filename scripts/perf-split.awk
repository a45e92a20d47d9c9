# perf-split.awk: where one process's CPU went, in µs per request, from a
# system-wide `perf record -a -g -F HZ` taken during a bench-peers
# measurement (README "Performance"):
#   perf script -i perf.data --comm PROCESS -F ip,sym |
#     awk -v REQ=REQUESTS -v HZ=997 -f scripts/perf-split.awk | sort -k3 -rn
# Each sample is a paragraph of frames, innermost first (l[1]); it is
# put in one bucket by its stack: kernel time by the system
# call it is under (k-write, k-read, k-epoll, k-futex, other calls) or
# interrupts; user time by its innermost function's package (Go's
# collector, allocator, scheduler and the rest of its runtime; crypto;
# Sluice's code; nginx's; the standard library; other).
BEGIN{RS=""}
{n=split($0,l,"\n"); split(l[1],f," "); s=f[2];
 if (/do_syscall_64|entry_SYSCALL/) { g="k-syscall-other"; if (/ksys_write|sys_writev|sys_sendto|sys_sendmsg/) g="k-write"; else if (/ksys_read|sys_recvfrom|sys_readv|sys_recvmsg/) g="k-read"; else if (/futex/) g="k-futex"; else if (/epoll/) g="k-epoll"; else if (/nanosleep/) g="k-sleep"}
 else if (/handle_softirqs|irqentry|asm_sysvec|asm_common_interrupt/) g="k-irq";
 else if (s ~ /^runtime\.|^internal\/runtime|^aeshash|^gcWrite|^indexbyte|^memeqbody/) {g="go-runtime"; if (/gcBgMarkWorker|gcDrain|scanblock|scanObject|markroot|gcAssist/) g="go-gc"; else if (/mallocgc/) g="go-malloc"; else if (/schedule|findRunnable|netpoll|park_m|goready|ready|mcall|gopark|wakep|startm|stopm/) g="go-sched"}
 else if (s ~ /^crypto/) g="crypto"; else if (s ~ /sluice/) g="sluice"; else if (s ~ /^ngx_/) g="nginx";
 else if (s ~ /^net|^bufio|^bytes|^strings|^strconv|^sync|^time|^io|^internal\/poll|^syscall|^context|^slices|^unicode|^reflect|^sort|^fmt|^errors/) g="stdlib"; else g="other";
 c[g]++; t++}
END{for(k in c) printf "%-16s %6d %6.2f us/req\n", k, c[k], c[k]*1e6/HZ/REQ; printf "%-16s %6d %6.2f us/req\n", "TOTAL", t, t*1e6/HZ/REQ}
