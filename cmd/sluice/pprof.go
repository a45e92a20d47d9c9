//go:build pprof

package main

import (
	"net/http"
	_ "net/http/pprof" // registers /debug/pprof on http.DefaultServeMux
	"os"
	"runtime"
)

// A profiling build (go build -tags pprof, used by make bench-peers with
// BENCH_PROFILE) serves net/http/pprof on SLUICE_PPROF (ip:port), with
// one in pprofMutexRate contended lock waits in its mutex profile. Release
// builds have no such listener.
func init() {
	if addr := os.Getenv("SLUICE_PPROF"); addr != "" {
		runtime.SetMutexProfileFraction(pprofMutexRate)
		go func() { _ = http.ListenAndServe(addr, nil) }()
	}
}

// pprofMutexRate samples one in this many contended lock waits.
const pprofMutexRate = 20
