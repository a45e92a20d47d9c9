//go:build race

package mitm

import (
	"runtime"
	"unsafe"
)

// The race detector's view of sysConn's raw system calls, as package
// syscall gives it for its own Read and Write: the bytes a read put
// into a buffer are a write of that buffer, the bytes a write sent a
// read of it, and ioSync orders a write before the reads that may see
// its bytes. Without it, a raw read would fill a buffer that another
// goroutine reads and `go test -race` would say nothing.

var ioSync int64

func raceReadDone(p []byte, n int) {
	if n > 0 {
		runtime.RaceWriteRange(unsafe.Pointer(&p[0]), n)
	}
	runtime.RaceAcquire(unsafe.Pointer(&ioSync))
}

func raceWriteStart() { runtime.RaceReleaseMerge(unsafe.Pointer(&ioSync)) }

func raceWriteDone(p []byte, n int) {
	if n > 0 {
		runtime.RaceReadRange(unsafe.Pointer(&p[0]), n)
	}
}
