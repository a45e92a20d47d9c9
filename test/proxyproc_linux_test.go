package test

import (
	"context"
	"net"
	"os/exec"
	"testing"
	"time"
)

// startProxy starts `sluice proxy --listen ADDR args…` on a free loopback
// port and waits for it to accept connections. It returns the address and
// the process's combined output; the process is killed at the end of the
// test.
func startProxy(t *testing.T, args ...string) (addr string, logs *syncBuffer) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr = l.Addr().String()
	l.Close()
	ctx, cancel := context.WithCancel(context.Background())
	logs = &syncBuffer{}
	cmd := exec.CommandContext(ctx, sluiceBin, append([]string{"proxy", "--listen", addr}, args...)...)
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); _ = cmd.Wait() })
	waitListening(t, addr, logs)
	return addr, logs
}

// waitListening waits for `sluice proxy` to accept connections.
func waitListening(t *testing.T, addr string, logs *syncBuffer) {
	t.Helper()
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return
		}
	}
	t.Fatalf("sluice proxy did not listen on %s: %s", addr, logs.String())
}
