package mitm

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"
)

// upNeverAnswered sends a GET for path through hp, whose upstream never answers
// it, and returns how long the header timeout took to fire (bounded at 3 s).
func upNeverAnswered(t *testing.T, hp *h1Pool, addr string, rht time.Duration) time.Duration {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	r, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/never", nil)
	start := time.Now()
	_, err := hp.roundTrip(ctx, &h1Request{r: r, host: addr}, rht)
	took := time.Since(start)
	if !errors.Is(err, errResponseHeaderTimeout) {
		t.Errorf("no answer: %v after %v, want the header timeout", err, took)
	}
	return took
}

// upDeadlineUpstream answers /never never, /big with a body longer than
// bufio's buffer, anything else with a short one.
func upDeadlineUpstream(t *testing.T) (*rawUpstream, chan struct{}) {
	never := make(chan struct{})
	u := startRawUpstream(t, func(i int, req *http.Request) string {
		switch req.URL.Path {
		case "/never":
			<-never
			return ""
		case "/big": // more than bufio's 4 KiB: the body path clears the deadline
			return "HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + strings.Repeat("x", 100000)
		}
		return "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
	})
	t.Cleanup(func() { close(never) })
	return u, never
}

// A deadline set by the last request that ends sooner than rht after the
// next request went out must not be kept (the header wait would be cut
// short).
func TestH1PoolKeptDeadlineNotTooEarly(t *testing.T) {
	const rht = 300 * time.Millisecond
	u, _ := upDeadlineUpstream(t)
	hp, addr := rawPool(u)
	defer hp.closeIdle()
	if got := poolGet(t, hp, addr, rht); got != "ok" {
		t.Fatal(got)
	}
	time.Sleep(150 * time.Millisecond) // the first deadline has ~187 ms left: less than rht
	if took := upNeverAnswered(t, hp, addr, rht); took < rht {
		t.Errorf("header timeout of %v fired after %v", rht, took)
	}
}

// rht drops between two requests on one connection: the later, far
// deadline must not be kept.
func TestH1PoolKeptDeadlineNotTooLate(t *testing.T) {
	const rht = 200 * time.Millisecond
	u, _ := upDeadlineUpstream(t)
	hp, addr := rawPool(u)
	defer hp.closeIdle()
	if got := poolGet(t, hp, addr, 2*time.Second); got != "ok" {
		t.Fatal(got)
	}
	if took := upNeverAnswered(t, hp, addr, rht); took > rht+headerSlack(rht)+150*time.Millisecond {
		t.Errorf("header timeout of %v fired after %v", rht, took)
	}
}

// A body longer than what is buffered clears the header deadline; the
// next request on the connection must set its own, not trust the
// bookkeeping of the cleared one.
func TestH1PoolDeadlineAfterClearedByBody(t *testing.T) {
	const rht = 300 * time.Millisecond
	u, _ := upDeadlineUpstream(t)
	hp, addr := rawPool(u)
	defer hp.closeIdle()
	r, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/big", nil)
	resp, err := hp.roundTrip(context.Background(), &h1Request{r: r, host: addr}, rht)
	if err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, resp.Body); len(got) != 100000 {
		t.Fatal(len(got))
	}
	resp.Body.Close()
	if n := u.conns.Load(); n != 1 {
		t.Fatal(n)
	}
	if took := upNeverAnswered(t, hp, addr, rht); took > rht+headerSlack(rht)+150*time.Millisecond {
		t.Errorf("header timeout of %v fired after %v", rht, took)
	}
	if n := u.conns.Load(); n != 1 {
		t.Errorf("%d conns: the /never request did not reuse the connection", n)
	}
}
