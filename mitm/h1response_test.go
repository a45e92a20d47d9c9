package mitm

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"testing/iotest"
	"time"
)

// responseRead is what reading one response head and its body from a
// stream gives: the head's fields, the body's bytes and how the body
// ended, and what the stream holds after (the next response's start).
type responseRead struct {
	err     string
	resp    http.Response // Body and Request cleared
	body    []byte
	bodyEnd string
	rest    []byte
}

// readOne reads data as exchange does (one byte peeked first, then the
// head), with read(br, req) for the head, the body to its end or first
// error, and the rest. chunk > 0 delivers the stream in pieces of that
// size (a head split across reads).
func readOne(data []byte, method string, chunk int, read func(*bufio.Reader, *http.Request) (*http.Response, error)) responseRead {
	var src io.Reader = bytes.NewReader(data)
	if chunk > 0 {
		src = iotest.HalfReader(src)
	}
	br := bufio.NewReaderSize(src, 4<<10)
	req, _ := http.NewRequest(method, "http://api.test/", nil)
	var out responseRead
	if _, err := br.Peek(1); err != nil {
		out.err = "peek: " + err.Error()
		return out
	}
	resp, err := read(br, req)
	if err != nil {
		out.err = err.Error()
		return out
	}
	out.resp = *resp
	out.resp.Body, out.resp.Request = nil, nil
	if resp.Request != req {
		out.err = "response names another request"
	}
	buf := make([]byte, 7) // small reads: every path through the body's ends
	for {
		n, err := resp.Body.Read(buf)
		out.body = append(out.body, buf[:n]...)
		if err != nil {
			out.bodyEnd = err.Error()
			break
		}
		if n == 0 && len(out.body) > len(data) {
			out.bodyEnd = "no progress"
			break
		}
	}
	out.rest, _ = io.ReadAll(br)
	return out
}

func stdRead(br *bufio.Reader, req *http.Request) (*http.Response, error) {
	return http.ReadResponse(br, req)
}

func ourRead(br *bufio.Reader, req *http.Request) (*http.Response, error) {
	resp, _, err := readResponse(br, req)
	return resp, err
}

// fastRead is parseResponse alone; nil when it did not take the head.
func fastRead(br *bufio.Reader, req *http.Request) (*http.Response, error) {
	if hr := parseResponse(br, req); hr != nil {
		return &hr.resp, nil
	}
	return nil, errors.New("not taken")
}

// sameRead compares readResponse with http.ReadResponse on data: the
// same head, the same body bytes and end, and the same bytes left for
// the next response (where a disagreement would desync a pooled
// connection).
func sameRead(t *testing.T, data []byte, method string) {
	t.Helper()
	for _, chunk := range []int{0, 1} {
		want := readOne(data, method, chunk, stdRead)
		got := readOne(data, method, chunk, ourRead)
		if !reflect.DeepEqual(want, got) {
			t.Fatalf("%s %q (chunked reads %v):\nnet/http: %+v\nours:     %+v", method, data, chunk > 0, want, got)
		}
	}
}

// responseSeeds are heads of every kind that matters to framing, the
// smuggling shapes among them, each followed by a next response.
var responseSeeds = []string{
	"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
	"HTTP/1.1 200 OK\r\nContent-Length: 13\r\nContent-Type: text/plain; charset=utf-8\r\nDate: Sun, 29 Nov 2026 16:00:00 GMT\r\n\r\nhello, world\n",
	"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n",
	"HTTP/1.1 404 Not Found\r\ncontent-length: 3\r\nx-thing: a\r\nX-THING: b\r\n\r\nabc",
	"HTTP/1.1 200 OK\r\nContent-Length:5\r\n\r\nhello",
	"HTTP/1.1 200 OK\r\nContent-Length: \t5 \t\r\n\r\nhello",
	"HTTP/1.1 200 OK\r\nContent-Length: 05\r\n\r\nhello",
	"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello",
	"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\nhello",
	"HTTP/1.1 200 OK\r\nContent-Length: 5,5\r\n\r\nhello",
	"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nhello!",
	"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
	"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
	"HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\nhello",
	"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\nhello",
	"HTTP/1.1 200 OK\r\nContent-Length: 1_0\r\n\r\nhello",
	"HTTP/1.1 200 OK\r\nContent-Length : 5\r\n\r\nhello",
	"HTTP/1.1 200 OK\r\n Content-Length: 5\r\n\r\nhello",
	"HTTP/1.1 200 OK\r\nX: y\r\n Content-Length: 5\r\n\r\nhello",
	"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX: folded\r\n\tvalue\r\n\r\nhello",
	"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
	"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
	"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
	"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\nContent-Length: 5\r\n\r\nhello",
	"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
	"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
	"HTTP/1.1 200 OK\r\nTransfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\nhello",
	"HTTP/1.1 200 OK\r\nTransfer-Encoding:\tchunked\r\n\r\n0\r\n\r\n",
	"HTTP/1.1 200 OK\r\nTrailer: X\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: y\r\n\r\n",
	"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello",
	"HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nContent-Length: 5\r\n\r\nhello",
	"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nContent-Length: 5\r\n\r\nhello",
	"HTTP/1.1 200 OK\r\nConnection: closed\r\nContent-Length: 5\r\n\r\nhello",
	"HTTP/1.1 200 OK\r\nPragma: no-cache\r\nContent-Length: 5\r\n\r\nhello",
	"HTTP/1.1 200 OK\r\nPragma: no-cache\r\nCache-Control: max-age=1\r\nContent-Length: 5\r\n\r\nhello",
	"HTTP/1.1 200 OK\r\n\r\nhello", // read to the close
	"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello",
	"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 5\r\n\r\nhello",
	"HTTP/2.0 200 OK\r\nContent-Length: 5\r\n\r\nhello",
	"http/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
	"HTTP/1.1  200 OK\r\nContent-Length: 5\r\n\r\nhello",
	"HTTP/1.1 200\tOK\r\nContent-Length: 5\r\n\r\nhello",
	"HTTP/1.1 2000 OK\r\nContent-Length: 5\r\n\r\nhello",
	"HTTP/1.1 +20 OK\r\nContent-Length: 5\r\n\r\nhello",
	"HTTP/1.1 099 OK\r\nContent-Length: 5\r\n\r\nhello",
	"HTTP/1.1 999 OK\r\nContent-Length: 5\r\n\r\nhello",
	"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
	"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
	"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello",
	"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\nhello",
	"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
	"HTTP/1.1 200 OK\nContent-Length: 5\n\nhello",
	"HTTP/1.1 200 OK\r\nContent-Length: 5\n\r\nhello",
	"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\nhello",
	"HTTP/1.1 200 OK\r\nX: a\rContent-Length: 5\r\n\r\nhello",
	"HTTP/1.1 200 OK\r\nContent-Length: 5\rX: a\r\n\r\nhello",
	"HTTP/1.1 200 OK\r\nX: a\nContent-Length: 2\r\n\r\nhello",
	"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX: \x00\r\n\r\nhello",
	"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX: \x7f\r\n\r\nhello",
	"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX: caf\xc3\xa9\r\n\r\nhello",
	"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX\xc3: a\r\n\r\nhello",
	"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n: a\r\n\r\nhello",
	"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nno colon\r\n\r\nhello",
	"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b: c\r\n\r\nhello",
	"HTTP/1.1 200 \xff\r\nContent-Length: 5\r\n\r\nhello",
	"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello", // short body: unexpected EOF
	"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nPOISONED",
	"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello\r\n",
	"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n",
	"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r",
	"HTTP/1.1 200 OK\r\n",
	"HTTP/1.1 200 OK",
	"\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
	"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n\r\nhello",
	"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 5\r\nVary: Accept\r\nvary: Origin\r\n\r\nhello",
	"HTTP/1.1 200 OK\r\nContent-length: 5\r\nCONTENT-LENGTH: 5\r\n\r\nhello",
	"HTTP/1.1 200 OK\r\nx-very-long-" + strings.Repeat("a", 70) + ": v\r\nContent-Length: 5\r\n\r\nhello",
	"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX: " + strings.Repeat("v", 5000) + "\r\n\r\nhello",
}

func TestReadResponseMatchesNetHTTP(t *testing.T) {
	for _, s := range responseSeeds {
		for _, m := range []string{http.MethodGet, http.MethodHead} {
			sameRead(t, []byte(s), m)
		}
	}
}

// TestReadResponseFastShape: the common shapes are parsed here (else the
// comparison above would only have compared net/http with itself).
func TestReadResponseFastShape(t *testing.T) {
	for _, s := range []string{
		responseSeeds[0], responseSeeds[1], responseSeeds[2], responseSeeds[3],
		"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello",
		"HTTP/1.1 200 OK\r\nPragma: no-cache\r\nContent-Length: 5\r\n\r\nhello",
		"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nPOISONED",
	} {
		if got := readOne([]byte(s), http.MethodGet, 0, fastRead); got.err != "" {
			t.Errorf("%q: the fast path did not take it", s)
		}
	}
	for _, s := range []string{
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
		"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX: folded\r\n\tvalue\r\n\r\nhello",
		"HTTP/1.1 200 OK\r\nContent-Length: 5\n\r\nhello",
		"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
	} {
		if got := readOne([]byte(s), http.MethodGet, 0, fastRead); got.err == "" {
			t.Errorf("%q: the fast path took it", s)
		}
		// A head left to net/http costs the fast path no allocation.
		br := bufio.NewReader(strings.NewReader(s))
		br.Peek(1)
		req, _ := http.NewRequest(http.MethodGet, "http://api.test/", nil)
		if a := testing.AllocsPerRun(10, func() { parseResponse(br, req) }); a != 0 {
			t.Errorf("%q: %v allocations before handing it to net/http", s, a)
		}
	}
}

// FuzzReadResponse holds readResponse to http.ReadResponse on any bytes:
// the same head, body and remainder, or the same error.
func FuzzReadResponse(f *testing.F) {
	for _, s := range responseSeeds {
		f.Add([]byte(s), false)
	}
	f.Fuzz(func(t *testing.T, data []byte, head bool) {
		m := http.MethodGet
		if head {
			m = http.MethodHead
		}
		sameRead(t, data, m)
	})
}

func BenchmarkReadResponse(b *testing.B) {
	data := []byte(benchResponse)
	for _, c := range []struct {
		name string
		read func(*bufio.Reader, *http.Request) (*http.Response, error)
	}{{"net-http", stdRead}, {"ours", ourRead}} {
		b.Run(c.name, func(b *testing.B) {
			rd := bytes.NewReader(data)
			br := bufio.NewReaderSize(rd, 4<<10)
			req, _ := http.NewRequest(http.MethodGet, "http://api.test/", nil)
			buf := make([]byte, 64)
			b.ReportAllocs()
			for range b.N {
				rd.Reset(data)
				br.Reset(rd)
				br.Peek(1)
				resp, err := c.read(br, req)
				if err != nil {
					b.Fatal(err)
				}
				for {
					if _, err := resp.Body.Read(buf); err != nil {
						break
					}
				}
			}
		})
	}
}

// poolGet sends a GET through hp with the response header timeout rht
// and returns the body.
func poolGet(t *testing.T, hp *h1Pool, addr string, rht time.Duration) string {
	t.Helper()
	r, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/", nil)
	resp, err := hp.roundTrip(context.Background(), &h1Request{r: r, host: addr}, rht)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func rawPool(u *rawUpstream) (*h1Pool, string) {
	addr := u.ln.Addr().String()
	return newH1Pool(func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	}, 4, time.Minute), addr
}

// TestH1PoolHeaderDeadlineKeptWhileIdle: an idle plain connection keeps
// its last response header deadline; once that has passed, the
// connection is still reused (the check before reuse clears it), and a
// new request's head still has its own timeout.
func TestH1PoolHeaderDeadlineKeptWhileIdle(t *testing.T) {
	var slow atomic.Bool
	u := startRawUpstream(t, func(i int, req *http.Request) string {
		if slow.Load() {
			time.Sleep(300 * time.Millisecond)
		}
		return "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
	})
	hp, addr := rawPool(u)
	defer hp.closeIdle()
	for i := range 2 {
		if i > 0 {
			time.Sleep(150 * time.Millisecond) // past the first request's header deadline
		}
		if got := poolGet(t, hp, addr, 50*time.Millisecond); got != "ok" {
			t.Fatalf("request %d: %q", i, got)
		}
	}
	if n := u.conns.Load(); n != 1 {
		t.Errorf("%d upstream connections for 2 requests 150 ms apart, want 1 (reused)", n)
	}
	slow.Store(true)
	r, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/", nil)
	_, err := hp.roundTrip(context.Background(), &h1Request{r: r, host: addr}, 50*time.Millisecond)
	if !errors.Is(err, errResponseHeaderTimeout) {
		t.Fatalf("a head 300 ms late with a 50 ms timeout: %v, want the header timeout", err)
	}
}

// TestH1PoolStrayBytesWhileIdle: bytes an upstream sends after a
// response, while its connection is idle, are never taken as the next
// request's response: the connection is not reused.
func TestH1PoolStrayBytesWhileIdle(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var conns atomic.Int32
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					io.Copy(io.Discard, req.Body)
					io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
					time.Sleep(20 * time.Millisecond) // the response has been read and the connection pooled
					io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled")
				}
			}()
		}
	}()
	u := &rawUpstream{ln: ln}
	hp, addr := rawPool(u)
	defer hp.closeIdle()
	for i := range 3 {
		if i > 0 {
			time.Sleep(60 * time.Millisecond)
		}
		if got := poolGet(t, hp, addr, time.Second); got != "ok" {
			t.Fatalf("request %d: %q", i, got)
		}
	}
	if n := conns.Load(); n != 3 {
		t.Errorf("%d upstream connections for 3 requests, want 3: none may be reused", n)
	}
}

// TestH1PoolDeadlineCalls: kept-alive exchanges with small responses
// set no read deadline once the first has set one good for the next
// headerSlack, on a plain connection and on TLS over a recordConn (the
// check for bytes crypto/tls holds asks the recordConn); on TLS over
// anything else that check sets one in the past, and each request its
// own. Each takes the poller's lock and moves a timer.
func TestH1PoolDeadlineCalls(t *testing.T) {
	for _, c := range []struct {
		name    string
		tls     bool
		records bool // dialed as Sluice dials, over a recordConn
		each    int  // deadlines per request; 0: one per headerSlack at most
	}{{"tcp", false, false, 0}, {"tls", true, true, 0}, {"tls without recordConn", true, false, 2}} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		var ccfg *tls.Config
		if c.tls {
			tca := newTestCA(t, "test CA")
			ln = tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{tca.leaf(t, "api.test")}})
			ccfg = &tls.Config{InsecureSkipVerify: true, ServerName: "api.test"} //nolint:gosec // the test's own upstream
		}
		serveCanned(t, ln, benchResponse)
		var dl deadlineLog
		addr := ln.Addr().String()
		hp := newH1Pool(func(ctx context.Context) (net.Conn, error) {
			var d net.Dialer
			nc, err := d.DialContext(ctx, "tcp", addr)
			if err != nil {
				return nil, err
			}
			var conn net.Conn = deadlineConn{nc, &dl}
			switch {
			case ccfg != nil && c.records:
				tc := newUpstreamTLS(conn, ccfg)
				return tc, tc.HandshakeContext(ctx)
			case ccfg != nil:
				tc := tls.Client(conn, ccfg)
				return tc, tc.HandshakeContext(ctx)
			}
			return conn, nil
		}, 4, time.Minute)
		poolGet(t, hp, addr, time.Minute) // dials
		dl.reset()
		const requests = 10
		start := time.Now()
		for range requests {
			if got := poolGet(t, hp, addr, time.Minute); got != "hello, world\n" {
				t.Fatalf("%q", got)
			}
		}
		got, want := len(dl.times()), c.each*requests
		if c.each == 0 {
			want = int(time.Since(start) / headerSlack(time.Minute)) // 0 unless the machine is very slow
			if got > want {
				t.Errorf("%s: %d read deadlines for %d requests, want %d at most", c.name, got, requests, want)
			}
		} else if got != want {
			t.Errorf("%s: %d read deadlines for %d requests, want %d", c.name, got, requests, want)
		}
		hp.closeIdle()
	}
}
