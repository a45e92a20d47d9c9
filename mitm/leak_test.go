package mitm

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/policy"
	"github.com/sluicehq/sluice/workload"
)

func countFDs(t *testing.T) int {
	es, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("no /proc/self/fd: %v", err)
	}
	return len(es)
}

// TestNoLeaks runs a batch of good and bad connections, shuts everything
// down, and checks that goroutines and file descriptors come back to
// where they were.
func TestNoLeaks(t *testing.T) {
	tca := newTestCA(t, "upstream test CA")
	batch := func(t *testing.T) {
		up := startUpstream(t, tca, true, echoHandler())
		slow := startUpstream(t, tca, false, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			for i := 0; i < 100; i++ {
				fmt.Fprintf(w, "data: %d\n\n", i)
				http.NewResponseController(w).Flush()
				select {
				case <-r.Context().Done():
					return
				case <-time.After(10 * time.Millisecond):
				}
			}
		}))
		dec := &fakeDecider{req: func(r *policy.Request) policy.Decision {
			if r.Path == "/deny" {
				return policy.Decision{Verdict: policy.Deny, Rule: "r", Reason: "no"}
			}
			return policy.Decision{}
		}}
		h := newHarness(t, tca, dec)
		dead, _ := net.Listen("tcp", "127.0.0.1:0")
		deadPort := dead.Addr().(*net.TCPAddr).Port
		dead.Close()
		for i := 0; i < 4; i++ {
			for _, h2 := range []bool{false, true} {
				c := h.client(h2)
				for _, path := range []string{"/ok", "/deny"} {
					resp, err := c.Get(fmt.Sprintf("https://api.test:%d%s", up.addr.Port(), path))
					if err != nil {
						t.Fatal(err)
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				resp, err := c.Get(fmt.Sprintf("https://api.test:%d/down", deadPort))
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				// Client gone mid-stream.
				resp, err = c.Get(fmt.Sprintf("https://api.test:%d/stream", slow.addr.Port()))
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Read(make([]byte, 8))
				resp.Body.Close()
				c.CloseIdleConnections()
			}
			// Garbage and a silent client on the explicit listener.
			g, err := net.Dial("tcp", h.url.Host)
			if err != nil {
				t.Fatal(err)
			}
			fmt.Fprintf(g, "CONNECT api.test:%d HTTP/1.1\r\n\r\n", up.addr.Port())
			g.Write([]byte{0x16, 3, 1, 0, 4, 9, 9, 9, 9})
			io.Copy(io.Discard, g)
			g.Close()
			s, err := net.Dial("tcp", h.url.Host)
			if err != nil {
				t.Fatal(err)
			}
			s.Write([]byte(strings.Repeat("x", 10)))
			s.Close()
		}
		// Transparent: a decrypted request, a relayed non-HTTP TLS
		// protocol and an L4 relay of random bytes.
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(h.ca.BundlePEM())
		tc := tls.Client(transparent(t, h, Destination{Addr: up.addr}, workload.Identity{PID: 1}), &tls.Config{ServerName: "api.test", RootCAs: pool})
		if resp, _ := rawRequest(t, tc, "GET /t HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n"); resp.StatusCode != 200 {
			t.Fatalf("transparent: %d", resp.StatusCode)
		}
		tc.Close()
		linePort := startTLSLineServer(t, tca, "")
		lc := tunnelTLS(t, h, linePort, []string{"x-line"})
		io.WriteString(lc, "ping\n")
		lc.Read(make([]byte, 5))
		lc.Close()
		rc := transparent(t, h, Destination{Addr: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), linePort)}, workload.Identity{PID: 2})
		rc.Write([]byte{0, 1, 2, 3})
		rc.Close()
		h.stop()
		up.Close()
		slow.Close()
	}
	// Warm up lazily started runtime and library goroutines.
	t.Run("warmup", batch)
	time.Sleep(100 * time.Millisecond)
	g0, f0 := runtime.NumGoroutine(), countFDs(t)
	t.Run("batch", batch)
	deadline := time.Now().Add(15 * time.Second)
	var g1, f1 int
	for {
		runtime.GC()
		g1, f1 = runtime.NumGoroutine(), countFDs(t)
		if g1 <= g0 && f1 <= f0 {
			break
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			n := runtime.Stack(buf, true)
			t.Fatalf("goroutines %d -> %d, fds %d -> %d\n%s", g0, g1, f0, f1, buf[:n])
		}
		time.Sleep(50 * time.Millisecond)
	}
}
