// Package policytest holds test helpers for code that uses policy: a real
// redis-server started on a loopback port for the rate-limit tests.
package policytest

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// Redis is a redis-server process started by a test.
type Redis struct {
	Addr string
	cmd  *exec.Cmd
}

// StartRedis starts redis-server on a free 127.0.0.1 port, without
// persistence, and stops it (by its PID) when the test ends. Without
// redis-server the test is skipped, or fails when CI=true.
func StartRedis(t testing.TB) *Redis {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("redis-server not found (CI=true): install redis-server")
		}
		t.Skip("redis-server not found; install redis-server to run this test")
	}
	var lastErr error
	for range 5 { // a port found free may be taken before redis binds it
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		r := &Redis{Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port))}
		r.cmd = exec.Command(bin, "--port", strconv.Itoa(port), "--bind", "127.0.0.1",
			"--save", "", "--appendonly", "no", "--dir", t.TempDir())
		if err := r.cmd.Start(); err != nil {
			t.Fatalf("start redis-server: %v", err)
		}
		if lastErr = r.waitReady(5 * time.Second); lastErr == nil {
			t.Cleanup(r.Stop)
			return r
		}
		r.Stop()
	}
	t.Fatalf("redis-server did not start: %v", lastErr)
	return nil
}

func (r *Redis) waitReady(limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		err := ping(r.Addr)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func ping(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if line != "+PONG\r\n" {
		return fmt.Errorf("redis answered %q", line)
	}
	return nil
}

// Stop kills the server (SIGKILL, by PID) and waits for it. It may be
// called more than once, e.g. to take Redis down in the middle of a test.
func (r *Redis) Stop() {
	if r.cmd == nil || r.cmd.Process == nil {
		return
	}
	r.cmd.Process.Signal(syscall.SIGKILL)
	r.cmd.Wait()
	r.cmd = nil
}
