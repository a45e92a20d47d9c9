package mitm

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestForwardingShapes(t *testing.T) {
	tca := newTestCA(t, "upstream test CA")
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	up := func(h2 bool) *upstream {
		return startUpstream(t, tca, h2, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			switch r.URL.Path {
			case "/head":
				w.Header().Set("Content-Length", "1234")
			case "/204":
				w.WriteHeader(204)
			case "/304":
				w.WriteHeader(304)
			case "/redirect":
				http.Redirect(w, r, "/elsewhere", http.StatusFound)
			case "/big-cl":
				w.Header().Set("Content-Length", strconv.Itoa(len(big)))
				w.Write(big)
			case "/big-chunked":
				for i := 0; i < len(big); i += 10000 {
					w.Write(big[i:min(i+10000, len(big))])
					http.NewResponseController(w).Flush()
				}
			case "/upload":
				hsh := sha256.New()
				n, _ := io.Copy(hsh, r.Body)
				fmt.Fprintf(w, "%d %x", n, hsh.Sum(nil))
			case "/headers":
				w.Header().Set("Connection", "X-Drop")
				w.Header().Set("X-Drop", "hop")
				w.Header().Set("Keep-Alive", "timeout=5")
				w.Header().Add("Set-Cookie", "a=1")
				w.Header().Add("Set-Cookie", "b=2")
			}
		}))
	}
	sum := sha256.Sum256(big)
	for _, h2 := range []bool{false, true} {
		u := up(h2)
		h := newHarness(t, tca, nil)
		c := h.client(h2)
		c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
		base := fmt.Sprintf("https://api.test:%d", u.addr.Port())
		t.Run(fmt.Sprintf("h2=%v", h2), func(t *testing.T) {
			for _, tc := range []struct {
				method, path string
				body         []byte
				status       int
				check        func(t *testing.T, resp *http.Response, body []byte)
			}{
				{"HEAD", "/head", nil, 200, func(t *testing.T, resp *http.Response, body []byte) {
					if resp.ContentLength != 1234 || len(body) != 0 {
						t.Errorf("HEAD: content length %d, body %d bytes", resp.ContentLength, len(body))
					}
				}},
				{"GET", "/204", nil, 204, nil},
				{"GET", "/304", nil, 304, nil},
				{"GET", "/redirect", nil, 302, func(t *testing.T, resp *http.Response, _ []byte) {
					if resp.Header.Get("Location") != "/elsewhere" {
						t.Errorf("Location %q", resp.Header.Get("Location"))
					}
				}},
				{"GET", "/big-cl", nil, 200, func(t *testing.T, resp *http.Response, body []byte) {
					if sha256.Sum256(body) != sum || resp.ContentLength != int64(len(big)) {
						t.Errorf("big body differs (%d bytes, CL %d)", len(body), resp.ContentLength)
					}
				}},
				{"GET", "/big-chunked", nil, 200, func(t *testing.T, resp *http.Response, body []byte) {
					if sha256.Sum256(body) != sum {
						t.Errorf("chunked body differs (%d bytes)", len(body))
					}
				}},
				{"POST", "/upload", big, 200, func(t *testing.T, _ *http.Response, body []byte) {
					if want := fmt.Sprintf("%d %x", len(big), sum); string(body) != want {
						t.Errorf("upload: upstream saw %q", body)
					}
				}},
				{"GET", "/headers", nil, 200, func(t *testing.T, resp *http.Response, _ []byte) {
					// (An HTTP/2 upstream drops Connection itself, so X-Drop is
					// then an ordinary header.)
					if (!h2 && resp.Header.Get("X-Drop") != "") || resp.Header.Get("Keep-Alive") != "" {
						t.Errorf("hop-by-hop response headers reached the client: %v", resp.Header)
					}
					if v := resp.Header.Values("Set-Cookie"); len(v) != 2 {
						t.Errorf("Set-Cookie %v", v)
					}
				}},
			} {
				var rb io.Reader
				if tc.body != nil {
					rb = io.MultiReader(bytes.NewReader(tc.body)) // unknown length: chunked / streamed
				}
				req, _ := http.NewRequest(tc.method, base+tc.path, rb)
				resp, err := c.Do(req)
				if err != nil {
					t.Fatalf("%s %s: %v", tc.method, tc.path, err)
				}
				body, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil {
					t.Fatalf("%s %s: read: %v", tc.method, tc.path, err)
				}
				if resp.StatusCode != tc.status {
					t.Fatalf("%s %s: status %d, want %d", tc.method, tc.path, resp.StatusCode, tc.status)
				}
				if tc.check != nil {
					tc.check(t, resp, body)
				}
			}
		})
	}
}

// TestUpstreamConnectionReuse: the connection dialed to learn the ALPN
// serves the first requests, and later requests reuse pooled ones, also
// across client connections.
func TestUpstreamConnectionReuse(t *testing.T) {
	tca := newTestCA(t, "upstream test CA")
	for _, h2 := range []bool{false, true} {
		t.Run(fmt.Sprintf("h2=%v", h2), func(t *testing.T) {
			var mu sync.Mutex
			newConns := 0
			up := startUpstreamWith(t, tca, h2, echoHandler(), func(s *httptest.Server) {
				s.Config.ConnState = func(_ net.Conn, s http.ConnState) {
					if s == http.StateNew {
						mu.Lock()
						newConns++
						mu.Unlock()
					}
				}
			})
			h := newHarness(t, tca, nil)
			for client := 0; client < 3; client++ {
				c := h.client(h2)
				for i := 0; i < 5; i++ {
					resp, err := c.Get(fmt.Sprintf("https://api.test:%d/r", up.addr.Port()))
					if err != nil {
						t.Fatal(err)
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				c.CloseIdleConnections()
			}
			mu.Lock()
			defer mu.Unlock()
			// The first client connection dials once to learn the ALPN and
			// serves its requests on that connection; the next ones find
			// the pool and reuse it.
			if newConns != 1 {
				t.Fatalf("%d upstream connections for 15 sequential requests over 3 client connections, want 1", newConns)
			}
		})
	}
}

// TestUpstreamALPNChange: when an upstream stops speaking h2, the pool
// that remembered h2 is dropped and later connections learn it afresh.
func TestUpstreamALPNChange(t *testing.T) {
	tca := newTestCA(t, "upstream test CA")
	var h1only atomic.Bool
	cert := tca.leaf(t, "api.test")
	up := startUpstreamWith(t, tca, true, echoHandler(), func(s *httptest.Server) {
		s.TLS = &tls.Config{
			Certificates: []tls.Certificate{cert},
			GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
				if h1only.Load() {
					return &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"http/1.1"}}, nil
				}
				return nil, nil
			},
		}
	})
	h := newHarness(t, tca, nil)
	get := func() (int, string) {
		c := h.client(true)
		defer c.CloseIdleConnections()
		resp, err := c.Get(fmt.Sprintf("https://api.test:%d/alpn", up.addr.Port()))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		return resp.StatusCode, readAll(t, resp.Body)
	}
	if code, body := get(); code != 200 || body != "hello GET /alpn HTTP/2.0 body=" {
		t.Fatalf("before: %d %q", code, body)
	}
	h1only.Store(true)
	h.p.Close() // drop idle upstream connections: the next request dials
	up.CloseClientConnections()
	// A request may still ride the old HTTP/2 connection until it is
	// gone, and one may fail while the stale pool is dropped; then the
	// upstream's HTTP/1.1 is learned afresh.
	for i := 0; i < 50; i++ {
		code, body := get()
		switch {
		case code == 200 && body == "hello GET /alpn HTTP/1.1 body=":
			return
		case code == 200 && body == "hello GET /alpn HTTP/2.0 body=":
		case code == 502 && strings.Contains(body, "upstream TLS handshake with api.test failed"):
		default:
			t.Fatalf("after: %d %q", code, body)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("the proxy kept using the stale h2 pool")
}

func TestPlainUpstreamReuseAcrossClients(t *testing.T) {
	var mu sync.Mutex
	newConns := 0
	srv := httptest.NewUnstartedServer(echoHandler())
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			mu.Lock()
			newConns++
			mu.Unlock()
		}
	}
	srv.Start()
	defer srv.Close()
	port := srv.Listener.Addr().(*net.TCPAddr).Port
	h := newHarness(t, nil, nil)
	for i := 0; i < 3; i++ {
		c := h.client(false)
		for j := 0; j < 3; j++ {
			resp, err := c.Get(fmt.Sprintf("http://api.test:%d/p", port))
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		c.CloseIdleConnections()
	}
	mu.Lock()
	defer mu.Unlock()
	if newConns != 1 {
		t.Fatalf("%d upstream connections for 9 sequential requests, want 1", newConns)
	}
}
