//go:build pprof

package main

import (
	"net/http"
	_ "net/http/pprof" // registers /debug/pprof on http.DefaultServeMux
	"os"
)

// A profiling build (go build -tags pprof, used by make bench-peers with
// BENCH_PROFILE) serves net/http/pprof on SLUICE_PPROF (ip:port). Release
// builds have no such listener.
func init() {
	if addr := os.Getenv("SLUICE_PPROF"); addr != "" {
		go func() { _ = http.ListenAndServe(addr, nil) }()
	}
}
