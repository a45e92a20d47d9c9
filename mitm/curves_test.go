package mitm

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"testing"

	"github.com/sluicehq/sluice/workload"
)

// TestClientKeyExchange: a transparent (node-local) client that offers
// the hybrid post-quantum key share with X25519, as Go's default does,
// gets X25519; one that supports only P-256 gets P-256; one that supports
// only the hybrid still gets it and is served. A client of the explicit
// listener on a loopback address is on this node too and gets X25519;
// one from another address keeps the hybrid.
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
	connect := func(t *testing.T, proxyAddr string) net.Conn {
		t.Helper()
		c, err := net.Dial("tcp", proxyAddr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		target := fmt.Sprintf("api.test:%d", up.addr.Port())
		fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target)
		// Byte by byte: the TLS stream after the answer stays unread.
		resp, err := http.ReadResponse(bufio.NewReaderSize(byteReader{c}, 16), &http.Request{Method: http.MethodConnect})
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("CONNECT: %v %v", resp, err)
		}
		return c
	}
	t.Run("explicit CONNECT from loopback, default client", func(t *testing.T) {
		if got := get(t, connect(t, h.url.Host), cfg()); got != tls.X25519 {
			t.Errorf("key exchange %v, want X25519 (a loopback client is on this node)", got)
		}
	})
	t.Run("explicit CONNECT from another host, default client", func(t *testing.T) {
		// The listener reports the peer as 198.51.100.7 (TEST-NET-2):
		// the proxy can't tell it from a client on another host.
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		remote := netip.MustParseAddrPort("198.51.100.7:40000")
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- h.p.ServeExplicit(ctx, peerListener{ln, remote}) }()
		defer func() { cancel(); <-done }()
		if got := get(t, connect(t, ln.Addr().String()), cfg()); got != tls.X25519MLKEM768 {
			t.Errorf("key exchange %v, want X25519MLKEM768", got)
		}
	})
}

// peerListener is a listener whose connections report peer as the
// address of their other end.
type peerListener struct {
	net.Listener
	peer netip.AddrPort
}

func (l peerListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return peerConn{c, net.TCPAddrFromAddrPort(l.peer)}, nil
}

type peerConn struct {
	net.Conn
	peer net.Addr
}

func (c peerConn) RemoteAddr() net.Addr { return c.peer }
