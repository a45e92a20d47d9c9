package mitm

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicehq/sluice/config"
	"github.com/sluicehq/sluice/workload"
)

// An idle keep-alive connection is let go by net/http and parked (see
// h1Conn.park); the requests that follow, whole, split around a pause or
// pipelined, are answered as before, on the same connection.
func TestIdleKeepAliveConnectionServesLaterRequests(t *testing.T) {
	var served atomic.Int64
	up := startPlainUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		served.Add(1)
		fmt.Fprintf(w, "%s %s\n", r.Method, r.URL.Path)
	}))
	h := newHarness(t, nil, nil)
	c := transparent(t, h, Destination{Addr: up.addr}, workload.Identity{PID: 7})
	br := bufio.NewReader(c)
	read := func(want string) {
		t.Helper()
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("read response for %s: %v", want, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(b) != "GET "+want+"\n" {
			t.Fatalf("%s: %d %q", want, resp.StatusCode, b)
		}
	}
	io.WriteString(c, "GET /one HTTP/1.1\r\nHost: api.test\r\n\r\n")
	read("/one")
	time.Sleep(h1ParkAfter + 200*time.Millisecond) // idle: parked
	io.WriteString(c, "GET /two HTTP/1.1\r\nHost: api.test\r\n\r\n")
	read("/two")
	time.Sleep(h1ParkAfter + 200*time.Millisecond)
	io.WriteString(c, "G") // one byte wakes the parked connection, the rest follows
	time.Sleep(100 * time.Millisecond)
	io.WriteString(c, "ET /three HTTP/1.1\r\nHost: api.test\r\n\r\n")
	read("/three")
	time.Sleep(h1ParkAfter + 200*time.Millisecond)
	io.WriteString(c, "GET /four HTTP/1.1\r\nHost: api.test\r\n\r\nGET /five HTTP/1.1\r\nHost: api.test\r\n\r\n")
	read("/four")
	read("/five")
	if n := served.Load(); n != 5 {
		t.Fatalf("upstream served %d requests, want 5", n)
	}
}

// A parked connection is closed after proxy.idleTimeout, like one net/http
// holds idle.
func TestParkedConnectionClosedAfterIdleTimeout(t *testing.T) {
	up := startPlainUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok\n")
	}))
	h := newHarness(t, nil, nil, func(c *config.Proxy, _ *Deps) { c.IdleTimeout = config.Duration(300 * time.Millisecond) })
	c := transparent(t, h, Destination{Addr: up.addr}, workload.Identity{PID: 7})
	resp, body := rawRequest(t, c, "GET / HTTP/1.1\r\nHost: api.test\r\n\r\n")
	if resp.StatusCode != 200 || body != "ok\n" {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
	start := time.Now()
	_ = c.SetReadDeadline(time.Now().Add(15 * time.Second))
	n, err := c.Read(make([]byte, 1))
	if n != 0 || err != io.EOF {
		t.Fatalf("read on the idle connection: %d, %v; want the proxy to close it (EOF)", n, err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("closed after %v with idleTimeout 300ms", d)
	}
}
