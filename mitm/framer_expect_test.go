package mitm

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"testing"

	"golang.org/x/net/http/httpguts"
)

// pipeListener hands net/http's server the in-memory connections sent on
// conns.
type pipeListener struct {
	conns chan net.Conn
	done  chan struct{}
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, errors.New("listener closed")
	}
}

func (l *pipeListener) Close() error   { close(l.done); return nil }
func (l *pipeListener) Addr() net.Addr { return &net.TCPAddr{} }

// FuzzFramerExpectMatchesNetHTTP: the framer marks a head's Expect field
// (headInfo.expect) exactly when net/http's server answers its request
// 417 without a handler, which is when Sluice records that answer itself
// (h1Conn.expectationFailed). net/http's server is the judge: each value
// goes to it in a request of its own.
func FuzzFramerExpectMatchesNetHTTP(f *testing.F) {
	for _, v := range []string{"foo", "100-continue", "100-Continue, foo", "x100-continue", "", " \t100-continue\t",
		"100-continue;q=0", "bar,100-continue", "100-continue100-continue", "\x80"} {
		f.Add(v)
	}
	ln := &pipeListener{conns: make(chan net.Conn), done: make(chan struct{})}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {})}
	go func() { _ = srv.Serve(ln) }()
	f.Cleanup(func() { _ = srv.Close() })
	f.Fuzz(func(t *testing.T, v string) {
		if !httpguts.ValidHeaderFieldValue(v) {
			t.Skip("net/http refuses the field (400), whatever it says")
		}
		req := "GET /x HTTP/1.1\r\nHost: api.test\r\nExpect: " + v + "\r\n\r\n"
		fr := newFramer()
		fr.feed([]byte(req))
		if len(fr.heads) != 1 {
			t.Fatalf("heads %+v", fr.heads)
		}
		client, server := net.Pipe()
		defer client.Close()
		ln.conns <- server
		go func() { _, _ = io.WriteString(client, req) }()
		resp, err := http.ReadResponse(bufio.NewReader(client), nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if got, want := fr.heads[0].expect != "", resp.StatusCode == http.StatusExpectationFailed; got != want {
			t.Fatalf("Expect %q: framer's expect %q, net/http answered %d", v, fr.heads[0].expect, resp.StatusCode)
		}
	})
}
