package mitm

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"

	"github.com/sluicehq/sluice/workload"
)

// TestClientKeyExchange: a transparent (node-local) client that offers
// the hybrid post-quantum key share with X25519, as Go's default does,
// gets X25519; one that supports only P-256 gets P-256; one that supports
// only the hybrid still gets it and is served; a client of the explicit
// listener keeps the hybrid.
func TestClientKeyExchange(t *testing.T) {
	tca := newTestCA(t, "upstream test CA")
	up := startUpstream(t, tca, false, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok")
	}))
	h := newHarness(t, tca, nil)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(h.ca.BundlePEM())
	dst := Destination{Addr: up.addr}
	id := workload.Identity{PID: 7, Comm: "curves"}

	get := func(t *testing.T, c net.Conn, cfg *tls.Config) tls.CurveID {
		t.Helper()
		tc := tls.Client(c, cfg)
		if err := tc.Handshake(); err != nil {
			t.Fatalf("handshake: %v", err)
		}
		fmt.Fprintf(tc, "GET / HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(tc), nil)
		if err != nil {
			t.Fatalf("read response: %v", err)
		}
		if got := readAll(t, resp.Body); resp.StatusCode != 200 || got != "ok" {
			t.Fatalf("status %d body %q, want 200 ok", resp.StatusCode, got)
		}
		return tc.ConnectionState().CurveID
	}
	cfg := func(curves ...tls.CurveID) *tls.Config {
		return &tls.Config{RootCAs: pool, ServerName: "api.test", NextProtos: []string{"http/1.1"}, CurvePreferences: curves}
	}

	t.Run("transparent, default client", func(t *testing.T) {
		if got := get(t, transparent(t, h, dst, id), cfg()); got != tls.X25519 {
			t.Errorf("key exchange %v, want X25519", got)
		}
	})
	t.Run("transparent, P-256 client", func(t *testing.T) {
		if got := get(t, transparent(t, h, dst, id), cfg(tls.CurveP256)); got != tls.CurveP256 {
			t.Errorf("key exchange %v, want P-256", got)
		}
	})
	t.Run("transparent, post-quantum only client", func(t *testing.T) {
		if got := get(t, transparent(t, h, dst, id), cfg(tls.X25519MLKEM768)); got != tls.X25519MLKEM768 {
			t.Errorf("key exchange %v, want X25519MLKEM768 (the client supports nothing else)", got)
		}
	})
	t.Run("explicit CONNECT, default client", func(t *testing.T) {
		c, err := net.Dial("tcp", h.url.Host)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		target := fmt.Sprintf("api.test:%d", up.addr.Port())
		fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target)
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("CONNECT: %v %v", resp, err)
		}
		if got := get(t, c, cfg()); got != tls.X25519MLKEM768 {
			t.Errorf("key exchange %v, want X25519MLKEM768", got)
		}
	})
}
