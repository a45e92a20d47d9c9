//go:build !unix

package mitm

import "time"

// processCPU is not measured on this OS: the benchmark reports 0.
func processCPU() time.Duration { return 0 }
