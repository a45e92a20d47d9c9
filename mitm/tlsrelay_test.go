package mitm

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/config"
)

// startTLSLineServer is a non-HTTP TLS upstream: it optionally greets
// first (like IMAPS), then echoes lines upper-cased.
func startTLSLineServer(t *testing.T, tca *testCA, greeting string) uint16 {
	t.Helper()
	cert := tca.leaf(t, "api.test")
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	acceptEach(ln, func(c net.Conn) {
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(20 * time.Second))
		if greeting != "" {
			io.WriteString(c, greeting)
		}
		br := bufio.NewReader(c)
		for {
			l, err := br.ReadString('\n')
			if err != nil {
				return
			}
			io.WriteString(c, strings.ToUpper(l))
		}
	})
	return uint16(ln.Addr().(*net.TCPAddr).Port)
}

// tunnelTLS opens CONNECT host:port and a TLS session with the given ALPN.
func tunnelTLS(t *testing.T, h *harness, port uint16, alpn []string) *tls.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", h.url.Host, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	fmt.Fprintf(c, "CONNECT api.test:%d HTTP/1.1\r\nHost: api.test\r\n\r\n", port)
	resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: "CONNECT"})
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT: %v %v", resp, err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(h.ca.BundlePEM())
	tc := tls.Client(c, &tls.Config{ServerName: "api.test", RootCAs: pool, NextProtos: alpn})
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	return tc
}

func TestDecryptedNonHTTPRelayed(t *testing.T) {
	tca := newTestCA(t, "upstream test CA")
	short := func(c *config.Proxy, _ *Deps) { c.PeekTimeout = config.Duration(100 * time.Millisecond) }
	t.Run("client speaks first", func(t *testing.T) {
		port := startTLSLineServer(t, tca, "")
		h := newHarness(t, tca, nil, short)
		tc := tunnelTLS(t, h, port, []string{"x-line"})
		br := bufio.NewReader(tc)
		for _, l := range []string{"hello\n", "again\n"} {
			io.WriteString(tc, l)
			got, err := br.ReadString('\n')
			if err != nil || got != strings.ToUpper(l) {
				t.Fatalf("got %q %v", got, err)
			}
		}
		tc.Close()
		rec := h.recs.wait(t, "L4 decrypted", func(r audit.Record) bool { return r.Kind == audit.KindL4 })
		if rec.TLS != audit.TLSDecrypted || rec.SNI != "api.test" || rec.BytesIn != 12 || rec.BytesOut != 12 || rec.Decision != "allow" {
			t.Errorf("record %+v", rec)
		}
	})
	t.Run("server speaks first", func(t *testing.T) {
		port := startTLSLineServer(t, tca, "* OK ready\r\n")
		h := newHarness(t, tca, nil, short)
		tc := tunnelTLS(t, h, port, nil)
		br := bufio.NewReader(tc)
		if g, err := br.ReadString('\n'); err != nil || g != "* OK ready\r\n" {
			t.Fatalf("greeting %q %v", g, err)
		}
		io.WriteString(tc, "a1 login\n")
		if g, err := br.ReadString('\n'); err != nil || g != "A1 LOGIN\n" {
			t.Fatalf("echo %q %v", g, err)
		}
		tc.Close()
		rec := h.recs.wait(t, "L4 decrypted", func(r audit.Record) bool { return r.Kind == audit.KindL4 })
		if rec.TLS != audit.TLSDecrypted || rec.BytesOut != int64(len("* OK ready\r\nA1 LOGIN\n")) {
			t.Errorf("record %+v", rec)
		}
	})
	for _, alpn := range [][]string{nil, {"http/1.1"}} {
		t.Run(fmt.Sprintf("idle HTTP client alpn=%v stays HTTP", alpn), func(t *testing.T) {
			up := startUpstream(t, tca, false, echoHandler())
			h := newHarness(t, tca, nil, short)
			tc := tunnelTLS(t, h, up.addr.Port(), alpn)
			time.Sleep(300 * time.Millisecond) // past PeekTimeout: the upstream, an HTTP server, stays silent
			resp, body := rawRequest(t, tc, "GET /late HTTP/1.1\r\nHost: api.test\r\n\r\n")
			if resp.StatusCode != 200 || body != "hello GET /late HTTP/1.1 body=" {
				t.Fatalf("status %d body %q", resp.StatusCode, body)
			}
			rec := h.recs.wait(t, "HTTP record", func(r audit.Record) bool { return r.Path == "/late" })
			if rec.Kind != audit.KindHTTP || rec.Decision != "allow" {
				t.Errorf("record %+v", rec)
			}
		})
	}
}
