// Package bpf holds Sluice's eBPF programs (sluice.c) and the Go bindings
// bpf2go generates from them. The generated files are committed, so a
// build needs no clang; `make generate` rebuilds them (clang, llvm and
// libbpf-dev). The agent (agent/) loads, attaches and pins these programs.
package bpf

//go:generate go tool bpf2go -tags linux -target bpfel -cc clang -cflags "-O2 -g -Wall -Werror -I./include" -type event -type origin -type origin_slot -type peer_key -type dns_key -type dns_origin -type settings -type lpm4_key -type lpm6_key -type verdict -type reason -type setting_flag -type cidr_action -type map_error_site Sluice sluice.c
