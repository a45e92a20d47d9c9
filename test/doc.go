// Package test holds Sluice's end-to-end tests: real clients in network
// namespaces and cgroups, against real upstream servers in other network
// namespaces, with the eBPF hooks attached. They need root and run only
// with SLUICE_E2E=1; with the gate set, a missing prerequisite is a
// failure, never a silent skip.
//
// Addresses come from the benchmarking ranges 198.18.0.0/15 and
// 2001:2::/48, held only by hosts the tests create, so a connect that is
// not redirected still lands on a test host and never leaves the machine.
// A test namespace has routes only for those ranges and for the intercept
// ranges (169.254.77.0/24, fdc5:1ce0:77::/64), no default route, and a
// resolv.conf naming its own loopback: anything else fails in the
// namespace with ENETUNREACH.
package test
