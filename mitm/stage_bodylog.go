package mitm

import (
	"io"
	"net/http"
	"sync"

	"github.com/sluicehq/sluice/policy"
)

// bodyLogStage puts the first bytes of the request and response bodies
// in the record, as the rule's logBodies asks, with every built-in
// detector's matches redacted (whatever the rule's content rules do).
// It copies what streams past and never holds up or changes a body.
//
// It runs after the content stage (the logged request body is what is
// forwarded, redacted by the rule's content rules too) and before the
// credentials stage, so a secret Sluice puts in is never logged.
type bodyLogStage struct{}

func (bodyLogStage) Name() string { return "bodylog" }

// redactReach is how many bytes past the logged length are kept for the
// redaction, so a secret the cut falls in is still recognized whole.
const redactReach = 8 << 10

func (bodyLogStage) Request(x *Exchange) *Answer {
	n := x.Decision.LogRequestBody
	r := x.Req
	if n <= 0 || r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 {
		return nil
	}
	c := &bodyCopy{limit: n}
	x.OnFinish(func() { x.Record.RequestBody = c.redacted() })
	x.WrapBody(func(rc io.ReadCloser) io.ReadCloser { return &teeBody{ReadCloser: rc, c: c} })
	return nil
}

func (bodyLogStage) Response(x *Exchange, resp *http.Response) *Answer {
	n := x.Decision.LogResponseBody
	if n <= 0 || resp.Body == nil || resp.Body == http.NoBody {
		return nil
	}
	c := &bodyCopy{limit: n}
	x.OnFinish(func() { x.Record.ResponseBody = c.redacted() })
	resp.Body = &teeBody{ReadCloser: resp.Body, c: c}
	return nil
}

// bodyCopy keeps the first limit (plus redactReach) bytes of a body. The
// request body is read by the transport's goroutine, hence the lock.
type bodyCopy struct {
	mu    sync.Mutex
	limit int64
	b     []byte
}

func (c *bodyCopy) write(p []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if room := c.limit + redactReach - int64(len(c.b)); room > 0 {
		c.b = append(c.b, p[:min(int64(len(p)), room)]...)
	}
}

// redacted is the copy with every detector's matches redacted, cut to
// the limit.
func (c *bodyCopy) redacted() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	policy.Redactor().Scan(c.b, policy.InBody, true)
	return string(c.b[:min(int64(len(c.b)), c.limit)])
}

// teeBody copies what is read through it into c.
type teeBody struct {
	io.ReadCloser
	c *bodyCopy
}

func (t *teeBody) Read(p []byte) (int, error) {
	n, err := t.ReadCloser.Read(p)
	if n > 0 {
		t.c.write(p[:n])
	}
	return n, err
}

var _ ResponseStage = bodyLogStage{}
