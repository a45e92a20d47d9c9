package mitm

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/config"
	"github.com/sluicehq/sluice/policy"
	"github.com/sluicehq/sluice/workload"
)

// seenUpstream is a plain upstream that answers every request with what
// it saw, and keeps the list.
type seenUpstream struct {
	*upstream
	mu   sync.Mutex
	seen []string
}

func startSeenUpstream(tb testing.TB) *seenUpstream {
	s := &seenUpstream{}
	s.upstream = startPlainUpstream(tb, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		line := fmt.Sprintf("%s %s cl=%d te=%v x=%q body=%q err=%v", r.Method, r.URL.RequestURI(), r.ContentLength, r.TransferEncoding, r.Header.Values("X-A"), body, err)
		s.mu.Lock()
		s.seen = append(s.seen, line)
		s.mu.Unlock()
		switch r.URL.Path {
		case "/chunked":
			w.Header().Set("X-Kind", "chunked")
			_, _ = io.WriteString(w, strings.Repeat("c", 3000))
			w.(http.Flusher).Flush()
			_, _ = io.WriteString(w, "end")
			return
		case "/empty":
			w.WriteHeader(http.StatusNoContent)
			return
		case "/trailer":
			w.Header().Set("Trailer", "X-T")
			_, _ = io.WriteString(w, "with trailer")
			w.Header().Set("X-T", "tv")
			return
		}
		_, _ = io.WriteString(w, line)
	}))
	return s
}

func (s *seenUpstream) take() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := s.seen
	s.seen = nil
	return out
}

// h1Outcome is what a client and the upstream saw of raw request bytes
// sent through the proxy on one plain transparent connection.
type h1Outcome struct {
	answers []string // status, framing and body of each response
	seen    []string // the requests the upstream got
	closed  bool     // the proxy closed the connection
}

// sendRaw sends raw on a new transparent connection to up through h and
// reads until the proxy closes or is quiet for quiet.
func sendRaw(t *testing.T, h *harness, up *seenUpstream, raw string, quiet time.Duration) h1Outcome {
	t.Helper()
	return sendParts(t, h, up, []string{raw}, quiet)
}

// sendParts is sendRaw of the parts' concatenation, each part sent once
// the proxy was quiet for quiet after the one before (what it answered
// to the parts so far is read first).
func sendParts(t *testing.T, h *harness, up *seenUpstream, parts []string, quiet time.Duration) h1Outcome {
	t.Helper()
	c, err := net.Dial("tcp", serveTransparent(t, h, t.Context(), 1, Destination{Addr: up.addr}, workload.Identity{PID: 7}))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var got bytes.Buffer
	var o h1Outcome
	buf := make([]byte, 32<<10)
	for _, part := range parts[:len(parts)-1] {
		if _, err := io.WriteString(c, part); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(quiet))
		n, _ := c.Read(buf)
		got.Write(buf[:n])
	}
	raw := strings.Join(parts, "")
	if _, err := io.WriteString(c, parts[len(parts)-1]); err != nil && got.Len() == 0 {
		t.Fatal(err)
	}
	for {
		_ = c.SetReadDeadline(time.Now().Add(quiet))
		n, err := c.Read(buf)
		got.Write(buf[:n])
		if err != nil {
			var ne net.Error
			o.closed = !errors.As(err, &ne) || !ne.Timeout()
			break
		}
	}
	// The requests, as far as they parse, for the answers to HEAD.
	var reqs []*http.Request
	for rr := bufio.NewReader(strings.NewReader(raw)); ; {
		r, err := http.ReadRequest(rr)
		if err != nil {
			break
		}
		_, _ = io.Copy(io.Discard, r.Body)
		reqs = append(reqs, r)
	}
	br := bufio.NewReader(&got)
	for i := 0; ; i++ {
		var req *http.Request
		if i < len(reqs) {
			req = reqs[i]
		}
		resp, err := http.ReadResponse(br, req)
		if err != nil {
			if got.Len() > 0 || br.Buffered() > 0 {
				o.answers = append(o.answers, "unparsed")
			}
			break
		}
		b, err := io.ReadAll(resp.Body)
		o.answers = append(o.answers, fmt.Sprintf("%d cl=%d te=%v close=%v trailer=%v body=%q err=%v",
			resp.StatusCode, resp.ContentLength, resp.TransferEncoding, resp.Close, resp.Trailer, b, err))
	}
	// The upstream's handler may still be reading what it got.
	time.Sleep(20 * time.Millisecond)
	o.seen = up.take()
	return o
}

// fastAndStd is a harness whose HTTP/1.1 connections take the fast loop
// and one whose go to net/http's server only, each with its upstream.
func fastAndStd(t *testing.T) (fast, std *harness, fastUp, stdUp *seenUpstream) {
	fast, std = newHarness(t, nil, nil), newHarness(t, nil, nil)
	std.p.h1.noFast = true
	return fast, std, startSeenUpstream(t), startSeenUpstream(t)
}

// The fast loop answers as net/http's server does, for requests it serves
// and for those it hands over, also when they are an attack: a request
// smuggled in a body, conflicting framing, malformed heads. Each case
// follows a good request on the same connection, so the loop is past its
// first request, and is followed by one that shows whether the
// connection is still in step.
func TestFastLoopAnswersAsNetHTTP(t *testing.T) {
	fast, std, fastUp, stdUp := fastAndStd(t)
	const good = "GET /good HTTP/1.1\r\nHost: api.test\r\n\r\n"
	const after = "GET /after HTTP/1.1\r\nHost: api.test\r\n\r\n"
	for _, tc := range []struct {
		name, req string
		status    int // of the case's own answer; 0: as net/http, not checked further
	}{
		{"plain GET", "GET /x?q=1 HTTP/1.1\r\nHost: api.test\r\nX-A: 1\r\nX-A: 2\r\n\r\n", 200},
		{"HEAD", "HEAD /x HTTP/1.1\r\nHost: api.test\r\n\r\n", 200},
		{"POST with a body", "POST /p HTTP/1.1\r\nHost: api.test\r\nContent-Length: 5\r\n\r\nhello", 200},
		{"a request smuggled in a body", "POST /p HTTP/1.1\r\nHost: api.test\r\nContent-Length: 40\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: api.test\r\n\r\n", 200},
		{"Content-Length and Transfer-Encoding", "POST /smuggle HTTP/1.1\r\nHost: api.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400},
		{"Transfer-Encoding then Content-Length", "POST /smuggle HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 30\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n", 400},
		{"two different Content-Lengths", "POST /p HTTP/1.1\r\nHost: api.test\r\nContent-Length: 4\r\nContent-Length: 40\r\n\r\nabcd", 400},
		{"two equal Content-Lengths", "POST /p HTTP/1.1\r\nHost: api.test\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\nabcd", 200},
		{"Content-Length with a sign", "POST /p HTTP/1.1\r\nHost: api.test\r\nContent-Length: +4\r\n\r\nabcd", 400},
		{"Content-Length with a space inside", "POST /p HTTP/1.1\r\nHost: api.test\r\nContent-Length: 4 4\r\n\r\nabcd", 400},
		{"Content-Length negative", "POST /p HTTP/1.1\r\nHost: api.test\r\nContent-Length: -1\r\n\r\n", 400},
		{"chunked with a bad size", "POST /c HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: api.test\r\n\r\n", 0},
		{"chunked", "POST /c HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 200},
		{"header line without a colon", "GET /x HTTP/1.1\r\nHost: api.test\r\nNoColon\r\n\r\n", 400},
		{"obs-fold", "GET /x HTTP/1.1\r\nHost: api.test\r\nX-A: a\r\n b\r\n\r\n", 0},
		{"bare LF", "GET /lf HTTP/1.1\nHost: api.test\nX-A: lf\n\n", 200},
		{"NUL in a header value", "GET /x HTTP/1.1\r\nHost: api.test\r\nX-A: a\x00b\r\n\r\n", 400},
		{"CR in a header value", "GET /x HTTP/1.1\r\nHost: api.test\r\nX-A: a\rb\r\n\r\n", 400},
		{"space before the colon", "GET /x HTTP/1.1\r\nHost: api.test\r\nX-A : a\r\n\r\n", 400},
		{"no Host", "GET /x HTTP/1.1\r\nX-A: a\r\n\r\n", 400},
		{"two Hosts", "GET /x HTTP/1.1\r\nHost: api.test\r\nHost: evil.test\r\n\r\n", 400},
		{"bad Host", "GET /x HTTP/1.1\r\nHost: api test\r\n\r\n", 400},
		{"head over MaxHeaderBytes", "GET /big HTTP/1.1\r\nHost: api.test\r\nX-A: " + strings.Repeat("a", 70<<10) + "\r\n\r\n", 431},
		{"head over the loop's buffer", "GET /big HTTP/1.1\r\nHost: api.test\r\nX-A: " + strings.Repeat("a", 8<<10) + "\r\n\r\n", 200},
		{"HTTP/1.0", "GET /old HTTP/1.0\r\nHost: api.test\r\n\r\n", 200},
		{"Expect 100-continue", "POST /p HTTP/1.1\r\nHost: api.test\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nab", 0},
		{"Connection: close", "GET /x HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n", 200},
		{"upgrade", "GET /ws HTTP/1.1\r\nHost: api.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", 0},
		{"OPTIONS *", "OPTIONS * HTTP/1.1\r\nHost: api.test\r\n\r\n", 200},
		{"absolute form", "GET http://api.test/abs HTTP/1.1\r\nHost: api.test\r\n\r\n", 200},
		{"chunked response", "GET /chunked HTTP/1.1\r\nHost: api.test\r\n\r\n", 200},
		{"204 response", "GET /empty HTTP/1.1\r\nHost: api.test\r\n\r\n", 204},
		{"response trailer", "GET /trailer HTTP/1.1\r\nHost: api.test\r\n\r\n", 200},
		{"body left unread", "POST /p HTTP/1.1\r\nHost: api.test\r\nContent-Length: 3\r\n\r\n", 0},
		{"garbage", "\x16\x03\x01 hello\r\n\r\n", 400},
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw := good + tc.req + after
			fo := sendRaw(t, fast, fastUp, raw, 300*time.Millisecond)
			so := sendRaw(t, std, stdUp, raw, 300*time.Millisecond)
			if !slices.Equal(fo.answers, so.answers) || !slices.Equal(fo.seen, so.seen) || fo.closed != so.closed {
				t.Errorf("fast loop:\n  answers %q\n  upstream saw %q\n  closed %v\nnet/http:\n  answers %q\n  upstream saw %q\n  closed %v",
					fo.answers, fo.seen, fo.closed, so.answers, so.seen, so.closed)
			}
			if tc.status != 0 && (len(fo.answers) < 2 || !strings.HasPrefix(fo.answers[1], fmt.Sprint(tc.status, " "))) {
				t.Errorf("answers %q, want the second %d", fo.answers, tc.status)
			}
			for _, s := range fo.seen {
				if strings.HasPrefix(s, "GET /smuggled") {
					t.Errorf("the upstream got a smuggled request: %q", fo.seen)
				}
			}
		})
	}
}

// The loop's answers to what it does not serve carry the records they
// carry under net/http: a 400 for both framings, a 431 with its reason.
func TestFastLoopHandedOverRecords(t *testing.T) {
	fast, _, up, _ := fastAndStd(t)
	o := sendRaw(t, fast, up, "GET /a HTTP/1.1\r\nHost: api.test\r\n\r\n"+
		"POST /smuggle HTTP/1.1\r\nHost: api.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 300*time.Millisecond)
	if len(o.answers) != 2 || !o.closed {
		t.Fatalf("answers %q closed %v", o.answers, o.closed)
	}
	rec := fast.recs.wait(t, "400", func(r audit.Record) bool { return r.Path == "/smuggle" })
	if rec.Status != 400 || rec.Reason != audit.ReasonSmuggling || rec.Decision != audit.DecisionError {
		t.Errorf("record %+v", rec)
	}
	o = sendRaw(t, fast, up, "GET /a HTTP/1.1\r\nHost: api.test\r\n\r\nGET /big HTTP/1.1\r\nHost: api.test\r\nX-A: "+strings.Repeat("a", fast.cfg.MaxHeaderBytes)+"\r\n\r\n", 300*time.Millisecond)
	if len(o.answers) != 2 || !strings.HasPrefix(o.answers[1], "431 ") {
		t.Fatalf("answers %q", o.answers)
	}
	rec = fast.recs.wait(t, "431", func(r audit.Record) bool { return r.Path == "/big" })
	if rec.Status != 431 || rec.Reason != audit.ReasonHeaderTooLarge {
		t.Errorf("record %+v", rec)
	}
}

// A client that sends part of a head and stops sending gets net/http's
// answer (a 400) and leaves its record, also on the fast loop.
func TestFastLoopIncompleteHeadRecord(t *testing.T) {
	type outcome struct {
		answer string
		recs   []string
	}
	run := func(noFast bool) outcome {
		h := newHarness(t, nil, nil)
		h.p.h1.noFast = noFast
		up := startSeenUpstream(t)
		c, err := net.Dial("tcp", serveTransparent(t, h, t.Context(), 1, Destination{Addr: up.addr}, workload.Identity{PID: 7}))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := io.WriteString(c, "GET /a HTTP/1.1\r\nHost: api.test\r\n\r\nGET /slow HTTP/1.1\r\nHost: api"); err != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
		_ = c.(*net.TCPConn).CloseWrite()
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		got, err := io.ReadAll(c)
		if err != nil {
			t.Fatalf("noFast=%v: %v", noFast, err)
		}
		var o outcome
		br := bufio.NewReader(bytes.NewReader(got))
		for {
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				break
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			o.answer += resp.Status + ";"
		}
		h.recs.wait(t, "of the incomplete head", func(r audit.Record) bool { return r.Path == "/slow" || r.Kind == audit.KindL4 })
		time.Sleep(100 * time.Millisecond)
		for _, r := range h.recs.all() {
			o.recs = append(o.recs, fmt.Sprintf("kind=%s path=%s status=%d decision=%s reason=%s", r.Kind, r.Path, r.Status, r.Decision, r.Reason))
		}
		return o
	}
	fo, so := run(false), run(true)
	if fo.answer != so.answer || !slices.Equal(fo.recs, so.recs) {
		t.Errorf("fast loop: %q %q\nnet/http: %q %q", fo.answer, fo.recs, so.answer, so.recs)
	}
	if !strings.Contains(so.answer, "400") {
		t.Errorf("net/http answered %q, want a 400 (the test no longer shows the case)", so.answer)
	}
}

// FuzzFastLoopMatchesNetHTTP sends the same bytes through the fast loop
// and through net/http's server: the client's answers, what the upstream
// got and whether the connection closed must be the same.
func FuzzFastLoopMatchesNetHTTP(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: api.test\r\n\r\n",
		"POST /p HTTP/1.1\r\nHost: api.test\r\nContent-Length: 5\r\n\r\nhello",
		"POST /p HTTP/1.1\r\nHost: api.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"GET /x HTTP/1.1\r\nHost: api.test\r\nX-A: a\r\n b\r\n\r\n",
		"HEAD /x HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n",
		"GET /chunked HTTP/1.1\nHost: api.test\n\nGET /empty HTTP/1.1\r\nHost: api.test\r\n\r\n",
		"GET /trailer HTTP/1.1\r\nHost: api.test\r\nContent-Length: 0\r\n\r\n",
		"POST /p HTTP/1.1\r\nHost: api.test\r\nContent-Length: 5\r\n\r\nhello\r\n",
		"GET / HTTP/1.1\r\nHost: api.test\r\n\r\nGET /x HT",
	} {
		f.Add(s)
	}
	fast, std := newHarness(f, nil, nil), newHarness(f, nil, nil)
	std.p.h1.noFast = true
	fastUp, stdUp := startSeenUpstream(f), startSeenUpstream(f)
	f.Fuzz(func(t *testing.T, req string) {
		// As sent, and followed by a request that ends the connection:
		// an answer must not wait for bytes that may never come.
		for _, raw := range []string{req, req + "GET /end HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n"} {
			fo := sendRaw(t, fast, fastUp, raw, 100*time.Millisecond)
			so := sendRaw(t, std, stdUp, raw, 100*time.Millisecond)
			if !slices.Equal(fo.answers, so.answers) || !slices.Equal(fo.seen, so.seen) || fo.closed != so.closed {
				t.Errorf("input %q\nfast loop:\n  answers %q\n  upstream saw %q\n  closed %v\nnet/http:\n  answers %q\n  upstream saw %q\n  closed %v",
					raw, fo.answers, fo.seen, fo.closed, so.answers, so.seen, so.closed)
			}
		}
	})
}

func TestHeadEnd(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int
	}{
		{"", 0},
		{"GET / HTTP/1.1\r\n", 0},
		{"GET / HTTP/1.1\r\n\r\n", 18},
		{"GET / HTTP/1.1\n\n", 16},
		{"GET / HTTP/1.1\n\r\nrest", 17},
		{"GET / HTTP/1.1\r\nA: b\r\n\r\nGET", 24},
		{"GET / HTTP/1.1\r\nA: b\r\n\r", 0},
		{"\n\n", 2},
	} {
		if got := headEnd([]byte(tc.in)); got != tc.want {
			t.Errorf("headEnd(%q) = %d, want %d", tc.in, got, tc.want)
		}
	}
}

// A client that leaves while the upstream thinks ends the upstream
// request on the fast loop too, with a body or without, and leaves a 499
// record: its socket's close wakes the read that finds it gone.
func TestFastLoopClientLeaves(t *testing.T) {
	for _, body := range []string{"", "hello"} {
		t.Run(fmt.Sprintf("body=%q", body), func(t *testing.T) {
			started, ended := make(chan struct{}), make(chan struct{})
			up := startPlainUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				_, _ = io.ReadAll(r.Body)
				close(started)
				select {
				case <-r.Context().Done():
					close(ended)
				case <-time.After(10 * time.Second):
				}
			}))
			h := newHarness(t, nil, nil)
			c, err := net.Dial("tcp", serveTransparent(t, h, t.Context(), 1, Destination{Addr: up.addr}, workload.Identity{PID: 7}))
			if err != nil {
				t.Fatal(err)
			}
			defer wantFastServed(t, h)
			req := fmt.Sprintf("POST /slow HTTP/1.1\r\nHost: api.test\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
			if _, err := io.WriteString(c, req); err != nil {
				t.Fatal(err)
			}
			select {
			case <-started:
			case <-time.After(5 * time.Second):
				t.Fatal("the request did not reach the upstream")
			}
			c.Close()
			wantAbandoned(t, h, ended)
		})
	}
}

// A head that comes in parts is served by the fast loop (a TLS
// connection's first request does: the sniff takes its first 64 bytes)
// when its whole lines so far are good, and answered as by net/http,
// which answers a malformed line as soon as it is whole, when they are
// not: the first part alone gets the same answer (or none) from both.
func TestFastLoopHeadInParts(t *testing.T) {
	for _, tc := range []struct {
		name  string
		parts []string
		// fast: the fast loop serves the request
		fast bool
	}{
		{"first line", []string{"GET /p HTTP/1.1\r\n", "Host: api.test\r\nX-A: 1\r\n\r\n"}, true},
		{"mid field", []string{"GET /p HTTP/1.1\r\nHost: api.test\r\nX-A: 1", "2\r\n\r\n"}, true},
		{"three parts", []string{"GET /p HTTP/1.1\r\nHo", "st: api.test\r\nX-A: 1\r\n", "\r\n"}, true},
		{"bare LF", []string{"GET /p HTTP/1.1\nHost: api.test\n", "X-A: 1\n\n"}, true},
		{"CR then LF", []string{"GET /p HTTP/1.1\r\nHost: api.test\r\n\r", "\n"}, true},
		{"POST", []string{"POST /p HTTP/1.1\r\nHost: api.test\r\n", "Content-Length: 5\r\n\r\nhello"}, true},
		{"malformed line", []string{"GET /p HTTP/1.1 x\r\nHo", "st: api.test\r\n\r\n"}, false},
		{"malformed version", []string{"GET /p HTTP/9.1\r\n", "Host: api.test\r\n\r\n"}, false},
		{"malformed field", []string{"GET /p HTTP/1.1\r\nHost: api.test\r\nX A: 1\r\n", "\r\n"}, false},
		{"space before the first field", []string{"GET /p HTTP/1.1\r\n Host: api.test\r\n", "\r\n"}, false},
		{"bad Content-Length", []string{"POST /p HTTP/1.1\r\nHost: api.test\r\nContent-Length: x\r\n", "\r\n"}, false},
		// An attacker's head, a line per part, would cost the loop a
		// parse of all the lines so far per part: past h1PartialChecks
		// parts, net/http's server reads it.
		{"a line per part", []string{"GET /p HTTP/1.1\r\n", "Host: api.test\r\n", "A: 1\r\n", "B: 2\r\n", "C: 3\r\n", "D: 4\r\n", "\r\n"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fast, std, fastUp, stdUp := fastAndStd(t)
			parts := append(slices.Clone(tc.parts), "GET /next HTTP/1.1\r\nHost: api.test\r\n\r\n")
			fo := sendParts(t, fast, fastUp, parts, 200*time.Millisecond)
			so := sendParts(t, std, stdUp, parts, 200*time.Millisecond)
			if !slices.Equal(fo.answers, so.answers) || !slices.Equal(fo.seen, so.seen) || fo.closed != so.closed {
				t.Errorf("fast loop:\n  answers %q\n  upstream saw %q\n  closed %v\nnet/http:\n  answers %q\n  upstream saw %q\n  closed %v",
					fo.answers, fo.seen, fo.closed, so.answers, so.seen, so.closed)
			}
			if len(so.answers) == 0 {
				t.Errorf("net/http gave no answer: the case shows nothing")
			}
			if served := fast.p.h1.fastServed.Load() > 0; served != tc.fast && fast.p.h1.gone != nil {
				t.Errorf("the fast loop served a request: %v, want %v", served, tc.fast)
			}
		})
	}
}

// wantFastServed fails t unless h's fast loop took a request (so that a
// test of the loop can't pass on net/http's server alone).
func wantFastServed(t *testing.T, h *harness) {
	t.Helper()
	if testing.Short() || h.p.h1.gone == nil {
		return
	}
	if h.p.h1.fastServed.Load() == 0 {
		t.Error("the fast loop served no request")
	}
}

// The fast loop answers without waiting for bytes that may never come:
// what follows the last request is not a whole request (as the fuzz
// test's inputs; the table test's always end with one).
func TestFastLoopAnswersWithoutNextRequest(t *testing.T) {
	fast, std, fastUp, stdUp := fastAndStd(t)
	const good = "GET /good HTTP/1.1\r\nHost: api.test\r\n\r\n"
	for _, tc := range []struct{ name, raw string }{
		{"POST body then CRLF", "POST /p HTTP/1.1\r\nHost: api.test\r\nContent-Length: 5\r\n\r\nhello\r\n"},
		{"a stray CRLF", good + "\r\n"},
		{"a stray byte", good + "x"},
		{"part of a head", good + "GET /x HT"},
		{"POST body then part of a head", "POST /p HTTP/1.1\r\nHost: api.test\r\nContent-Length: 5\r\n\r\nhelloGET /x"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fo := sendRaw(t, fast, fastUp, tc.raw, 500*time.Millisecond)
			so := sendRaw(t, std, stdUp, tc.raw, 500*time.Millisecond)
			if !slices.Equal(fo.answers, so.answers) || !slices.Equal(fo.seen, so.seen) || fo.closed != so.closed {
				t.Errorf("fast loop:\n  answers %q\n  upstream saw %q\n  closed %v\nnet/http:\n  answers %q\n  upstream saw %q\n  closed %v",
					fo.answers, fo.seen, fo.closed, so.answers, so.seen, so.closed)
			}
			if len(so.answers) == 0 {
				t.Errorf("net/http gave no answer: the case shows nothing")
			}
		})
	}
	wantFastServed(t, fast)
}

// Pipelined requests: the answer to the first goes out while the
// second's handler still waits for its upstream, as with net/http.
func TestFastLoopPipelinedSlowSecond(t *testing.T) {
	release := make(chan struct{})
	up := startPlainUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			<-release
		}
		_, _ = io.WriteString(w, r.URL.Path)
	}))
	h := newHarness(t, nil, nil)
	t.Cleanup(func() { close(release) })
	c, err := net.Dial("tcp", serveTransparent(t, h, t.Context(), 1, Destination{Addr: up.addr}, workload.Identity{PID: 7}))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, "GET /a HTTP/1.1\r\nHost: api.test\r\n\r\nGET /slow HTTP/1.1\r\nHost: api.test\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("no answer to the first request while the second waits: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(b) != "/a" {
		t.Errorf("first answer %d %q", resp.StatusCode, b)
	}
	wantFastServed(t, h)
}

// An upstream that refuses a large upload at once: its answer reaches
// the client that is still sending the body (which then stops), as with
// net/http, not when the body's end or the idle timeout comes.
func TestFastLoopEarlyAnswerToBigBody(t *testing.T) {
	up := startPlainUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusRequestEntityTooLarge)
		_, _ = io.WriteString(w, "no")
	}))
	for _, noFast := range []bool{false, true} {
		h := newHarness(t, nil, nil)
		h.p.h1.noFast = noFast
		c, err := net.Dial("tcp", serveTransparent(t, h, t.Context(), 1, Destination{Addr: up.addr}, workload.Identity{PID: 7}))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		raw := "POST /up HTTP/1.1\r\nHost: api.test\r\nContent-Length: 1000000\r\n\r\n" + strings.Repeat("x", 10<<10)
		if _, err := io.WriteString(c, raw); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("noFast=%v: no answer while the body is unfinished: %v", noFast, err)
		}
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusRequestEntityTooLarge || string(b) != "no" {
			t.Errorf("noFast=%v: answer %d %q", noFast, resp.StatusCode, b)
		}
		if !noFast {
			wantFastServed(t, h)
		}
	}
}

// A client that leaves in the middle of its request body leaves the
// record it leaves with net/http: 499, client closed, allowed.
func TestFastLoopClientLeavesMidBody(t *testing.T) {
	got := make(chan struct{}, 1)
	up := startPlainUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case got <- struct{}{}:
		default:
		}
		_, _ = io.ReadAll(r.Body)
		_, _ = io.WriteString(w, "read")
	}))
	for _, cl := range []int{10, 100000} {
		t.Run(fmt.Sprint("Content-Length=", cl), func(t *testing.T) {
			var recs [2]string
			for i, noFast := range []bool{false, true} {
				h := newHarness(t, nil, nil)
				h.p.h1.noFast = noFast
				c, err := net.Dial("tcp", serveTransparent(t, h, t.Context(), 1, Destination{Addr: up.addr}, workload.Identity{PID: 7}))
				if err != nil {
					t.Fatal(err)
				}
				if _, err := fmt.Fprintf(c, "POST /p HTTP/1.1\r\nHost: api.test\r\nContent-Length: %d\r\n\r\nhello", cl); err != nil {
					t.Fatal(err)
				}
				select { // a small body may be read whole before the upstream gets the request
				case <-got:
				case <-time.After(300 * time.Millisecond):
				}
				c.Close()
				r := h.recs.wait(t, "of the request", func(r audit.Record) bool { return r.Path == "/p" })
				recs[i] = fmt.Sprintf("status=%d decision=%s reason=%s end=%s source=%s", r.Status, r.Decision, r.Reason, r.End, r.Source)
				if !noFast {
					wantFastServed(t, h)
				}
			}
			if recs[0] != recs[1] || !strings.HasPrefix(recs[0], fmt.Sprint("status=", statusClientClosed)) {
				t.Errorf("fast loop: %s\nnet/http:  %s", recs[0], recs[1])
			}
		})
	}
}

// fastResponseTo is a fastResponse for req writing to out.
func fastResponseTo(out *bytes.Buffer, req *http.Request) *fastResponse {
	fs := &h1Fast{bw: bufio.NewWriter(out)}
	fs.w.fs = fs
	fs.w.reset(req)
	return &fs.w
}

// As net/http's: an informational answer carries no framing fields, and
// a trailer goes out only under a valid field name.
func TestFastResponseFields(t *testing.T) {
	var out bytes.Buffer
	w := fastResponseTo(&out, httptest.NewRequest(http.MethodGet, "/", nil))
	w.Header().Set("Link", "</a>; rel=preload")
	w.Header().Set("Content-Length", "5")
	w.Header().Set("Transfer-Encoding", "chunked")
	w.WriteHeader(http.StatusEarlyHints)
	if got := out.String(); strings.Contains(got, "Content-Length") || strings.Contains(got, "Transfer-Encoding") || !strings.Contains(got, "Link: ") {
		t.Errorf("103 answer %q", got)
	}
	out.Reset()
	w = fastResponseTo(&out, httptest.NewRequest(http.MethodGet, "/", nil))
	w.Header()["Trailer"] = []string{"X-Good, X-Bad Name"}
	w.WriteHeader(http.StatusOK)
	_, _ = io.WriteString(w, "body")
	w.Header().Set("X-Good", "g")
	w.Header()["X-Bad Name"] = []string{"b"}
	if err := w.finish(); err != nil {
		t.Fatal(err)
	}
	_ = w.fs.bw.Flush()
	resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(out.Bytes())), nil)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.ReadAll(resp.Body)
	if resp.Trailer.Get("X-Good") != "g" || strings.Contains(out.String(), "X-Bad Name: b") {
		t.Errorf("answer %q, trailer %v", out.String(), resp.Trailer)
	}
}

// A goroutine still reading a request body after its handler returned
// (a Transport sending it upstream) may set the read deadline through
// the handler's ResponseController: that call does nothing, also while
// the next request's handler runs; the current handler's call applies.
func TestFastLoopLateReadDeadline(t *testing.T) {
	conn, peer := net.Pipe()
	defer conn.Close()
	defer peer.Close()
	fs := &h1Fast{c: &h1Conn{Conn: conn}}
	fs.w.fs = fs
	newBody := func() *fastBody {
		b := &fastBody{fs: fs}
		b.rw = bodyResponse{&fs.w, b}
		return b
	}
	first := newBody()
	fs.handlerRuns(true)
	fs.handlerRuns(false)
	first.close()
	fs.dlSet = true
	late := http.NewResponseController(&first.rw)
	if err := late.SetReadDeadline(time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if !fs.dlSet {
		t.Error("a late call between requests took the loop's deadline")
	}
	second := newBody()
	fs.handlerRuns(true)
	if err := late.SetReadDeadline(time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if !fs.dlSet {
		t.Error("a late call during the next handler took the deadline")
	}
	if err := http.NewResponseController(&second.rw).SetReadDeadline(time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if fs.dlSet {
		t.Error("the running handler's call did not apply")
	}
	fs.handlerRuns(false)
}

// A read deadline a handler set on its connection (the MCP stage gives a
// JSON POST's body IdleTimeout) does not cut the body of the request
// pipelined behind it: that body, sent in pieces less than IdleTimeout
// apart, arrives whole however long it takes in all, as under net/http.
func TestFastLoopPipelinedBodyOutlivesHandlerDeadline(t *testing.T) {
	const idle = 400 * time.Millisecond
	up := startPlainUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s got %q", r.URL.Path, b)
	}))
	for _, noFast := range []bool{false, true} {
		t.Run(fmt.Sprint("noFast=", noFast), func(t *testing.T) {
			h := newHarness(t, nil, nil, func(c *config.Proxy, _ *Deps) { c.IdleTimeout = config.Duration(idle) })
			h.p.h1.noFast = noFast
			c, err := net.Dial("tcp", serveTransparent(t, h, t.Context(), 1, Destination{Addr: up.addr}, workload.Identity{PID: 7}))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			first := "POST /json HTTP/1.1\r\nHost: api.test\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
			second := "POST /slow HTTP/1.1\r\nHost: api.test\r\nContent-Length: 10\r\n\r\nh"
			if _, err := io.WriteString(c, first+second); err != nil {
				t.Fatal(err)
			}
			for _, b := range "elloworld" { // 9 × idle/3: past the first handler's deadline
				time.Sleep(idle / 3)
				if _, err := io.WriteString(c, string(b)); err != nil {
					t.Fatal(err)
				}
			}
			_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
			br := bufio.NewReader(c)
			for _, want := range []string{`/json got "{}"`, `/slow got "helloworld"`} {
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatalf("read the answer %q: %v", want, err)
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK || string(b) != want {
					t.Errorf("answer %d %q, want 200 %q", resp.StatusCode, b, want)
				}
			}
			if !noFast {
				wantFastServed(t, h)
			}
		})
	}
}

// The wait for the next request keeps a read deadline that ends within
// h1ParkSlack after h1ParkAfter (never before it, never after the idle
// timeout), so that a busy connection does not set one per request; with
// an idle timeout before h1ParkAfter it is that timeout, exactly.
func TestFastLoopWaitDeadline(t *testing.T) {
	base := time.Now()
	for _, tc := range []struct {
		name  string
		idle  time.Duration
		waits []time.Duration // since, after base
		dlSet []bool          // dlSet before each wait: false, a handler changed the deadline
		want  []time.Duration // the deadlines set, after base
	}{
		{"kept while early enough", time.Minute,
			[]time.Duration{0, time.Millisecond, h1ParkSlack, h1ParkSlack + time.Millisecond, 2 * h1ParkSlack},
			nil,
			[]time.Duration{h1ParkAfter + h1ParkSlack, h1ParkAfter + 2*h1ParkSlack + time.Millisecond}},
		{"set anew after a handler's", time.Minute,
			[]time.Duration{0, time.Millisecond},
			[]bool{true, false},
			[]time.Duration{h1ParkAfter + h1ParkSlack, h1ParkAfter + h1ParkSlack + time.Millisecond}},
		{"not past the idle timeout", h1ParkAfter + time.Millisecond,
			[]time.Duration{0, time.Millisecond, 2 * time.Millisecond},
			nil,
			[]time.Duration{h1ParkAfter + time.Millisecond, h1ParkAfter + 3*time.Millisecond}},
		{"idle timeout before parking", h1ParkAfter / 2,
			[]time.Duration{0, time.Millisecond},
			nil,
			[]time.Duration{h1ParkAfter / 2, h1ParkAfter/2 + time.Millisecond}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var dl deadlineLog
			fs := &h1Fast{s: &h1Server{idleTimeout: tc.idle}, c: &h1Conn{Conn: deadlineConn{log: &dl}}}
			for i, w := range tc.waits {
				if tc.dlSet != nil && !tc.dlSet[i] {
					fs.dlSet = false
				}
				fs.waitDeadline(base.Add(w))
				if d := fs.dl.Sub(base.Add(w)); d < min(h1ParkAfter, tc.idle) || d > min(h1ParkAfter+h1ParkSlack, tc.idle) {
					t.Errorf("wait %d: the deadline is %v after its start", i, d)
				}
			}
			var got []time.Duration
			for _, s := range dl.times() {
				got = append(got, s.Sub(base))
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("deadlines set %v, want %v", got, tc.want)
			}
		})
	}
}

// The Date field is the time of the response, to the second, formatted
// once per second.
func TestFastResponseDate(t *testing.T) {
	var w fastResponse
	base := time.Date(2026, 11, 29, 16, 40, 7, 0, time.FixedZone("x", 3600))
	for _, at := range []time.Time{base, base.Add(999 * time.Millisecond), base.Add(time.Second), base.Add(time.Hour + 10*time.Millisecond), base.Add(time.Second)} {
		if got, want := string(w.dateAt(at)), at.UTC().Format(http.TimeFormat); got != want {
			t.Errorf("dateAt(%v) = %q, want %q", at, got, want)
		}
	}
}

// FuzzFastLoopHeadInParts is FuzzFastLoopMatchesNetHTTP with the bytes
// sent in two parts, cut at cut, the second once the proxy was quiet
// after the first: a head in parts is answered as by net/http, whether
// the loop waits for the rest of it or hands it over.
func FuzzFastLoopHeadInParts(f *testing.F) {
	for _, s := range []struct {
		req       string
		cut, cut2 uint16
	}{
		{"GET /p HTTP/1.1\r\nHost: api.test\r\nX-A: 1\r\n\r\n", 17, 0},
		{"GET /p HTTP/1.1\r\nHost: api.test\r\nX-A: 1\r\n\r\n", 40, 0},
		{"GET /p HTTP/1.1\r\nHost: api.test\r\nX-A: 1\r\n\r\n", 17, 33},
		{"GET /p HTTP/1.1 x\r\nHost: api.test\r\n\r\n", 20, 0},
		{"GET /p HTTP/1.1\r\nHost: api.test\r\nX A: 1\r\n\r\n", 42, 0},
		{"GET /p HTTP/1.1\r\nHost: api.test\r\nX A: 1\r\n\r\n", 17, 35},
		{"POST /p HTTP/1.1\r\nHost: api.test\r\nContent-Length: 5\r\n\r\nhello", 30, 0},
		{"GET /x HTTP/1.1\r\nHost: api.test\r\nX-A: a\r\n b\r\n\r\n", 40, 0},
		{"GET /x HTTP/1.1\r\nHost: api.test\r\nX-A: a\r\n b\r\n\r\n", 33, 41},
		{"GET /x HTTP/1.1\nHost: api.test\n\n", 16, 0},
	} {
		f.Add(s.req, s.cut, s.cut2)
	}
	fast, std := newHarness(f, nil, nil), newHarness(f, nil, nil)
	std.p.h1.noFast = true
	fastUp, stdUp := startSeenUpstream(f), startSeenUpstream(f)
	f.Fuzz(func(t *testing.T, req string, cut, cut2 uint16) {
		raw := req + "GET /end HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n"
		// Up to three parts: cut where the two numbers say (0: no cut).
		var cuts []int
		for _, c := range []uint16{cut, cut2} {
			if n := int(c) % len(raw); n > 0 && !slices.Contains(cuts, n) {
				cuts = append(cuts, n)
			}
		}
		slices.Sort(cuts)
		var parts []string
		from := 0
		for _, n := range cuts {
			parts = append(parts, raw[from:n])
			from = n
		}
		parts = append(parts, raw[from:])
		fo := sendParts(t, fast, fastUp, parts, 100*time.Millisecond)
		so := sendParts(t, std, stdUp, parts, 100*time.Millisecond)
		if !slices.Equal(fo.answers, so.answers) || !slices.Equal(fo.seen, so.seen) || fo.closed != so.closed {
			t.Errorf("input %q\nfast loop:\n  answers %q\n  upstream saw %q\n  closed %v\nnet/http:\n  answers %q\n  upstream saw %q\n  closed %v",
				parts, fo.answers, fo.seen, fo.closed, so.answers, so.seen, so.closed)
		}
	})
}

// The upstream's header map becomes the answer's (adoptHeader), so each
// answer on a kept-alive connection must carry its own upstream fields
// and none of the answer before, plus the policy's added field exactly
// once. A failure here would show as one client's answer carrying
// another's fields.
func TestFastLoopAnswerFieldsAreEachAnswersOwn(t *testing.T) {
	tca := newTestCA(t, "upstream test CA")
	up := startUpstream(t, tca, false, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := strings.TrimPrefix(r.URL.Path, "/")
		w.Header().Set("X-Answer-"+n, n)
		w.Header().Set("X-Answer", n)
		_, _ = io.WriteString(w, "answer "+n)
	}))
	dec := &fakeDecider{req: func(*policy.Request) policy.Decision {
		return policy.Decision{Rule: "test", Header: http.Header{"X-Policy": {"added"}}}
	}}
	h := newHarness(t, tca, dec)
	c := connectTLS(t, h, "api.test", up.addr.Port())
	defer c.Close()
	for _, n := range []string{"1", "2", "3"} {
		resp, body := rawRequest(t, c, "GET /"+n+" HTTP/1.1\r\nHost: api.test\r\n\r\n")
		if body != "answer "+n {
			t.Fatalf("request %s: body %q", n, body)
		}
		for _, other := range []string{"1", "2", "3"} {
			if got := resp.Header.Get("X-Answer-" + other); (other == n) != (got == other) {
				t.Errorf("request %s: X-Answer-%s is %q (header %v)", n, other, got, resp.Header)
			}
		}
		if got := resp.Header.Values("X-Answer"); len(got) != 1 || got[0] != n {
			t.Errorf("request %s: X-Answer %q, want [%s]", n, got, n)
		}
		if got := resp.Header.Values("X-Policy"); len(got) != 1 || got[0] != "added" {
			t.Errorf("request %s: X-Policy %q, want [added]", n, got)
		}
	}
}
