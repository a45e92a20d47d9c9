package test

import (
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The attacker's connect survives a signal that lands in the call: the
// kernel returns EINTR (SO_SNDTIMEO set: not restarted) and goes on
// connecting, and connect waits for that connect to end instead of
// reporting EINTR as its outcome (TestAgentForgedMark once read EINTR
// where a proxied connection was due: Go's runtime had sent the
// thread its preemption signal).
//
// The listener's accept queue is full, so the kernel drops the test's
// SYN and the call waits for the retransmission; SIGURG (the signal Go
// preempts with) arrives meanwhile, then a place in the queue is freed.
// Loopback only, no privileges.
func TestAttackerConnectSurvivesASignal(t *testing.T) {
	ln, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(ln)
	if err := unix.Bind(ln, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(ln, 0); err != nil { // a queue of one
		t.Fatal(err)
	}
	sa, err := unix.Getsockname(ln)
	if err != nil {
		t.Fatal(err)
	}
	dial := func() int {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Close(fd) })
		tv := unix.Timeval{Sec: 5}
		_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv)
		return fd
	}
	if err := connect(dial(), sa); err != nil { // fills the queue
		t.Fatalf("first connect: %v", err)
	}

	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	tid := unix.Gettid()
	go func() {
		time.Sleep(200 * time.Millisecond) // the connect below waits by then
		_ = unix.Tgkill(unix.Getpid(), tid, unix.SIGURG)
		time.Sleep(100 * time.Millisecond)
		if nfd, _, err := unix.Accept(ln); err == nil { // room for the retransmitted SYN
			unix.Close(nfd)
		}
	}()
	start := time.Now()
	if err := connect(dial(), sa); err != nil {
		t.Fatalf("connect interrupted by a signal: %v (after %v), want it connected", err, time.Since(start).Round(time.Millisecond))
	}
}
