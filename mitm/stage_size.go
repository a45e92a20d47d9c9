package mitm

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/sluicehq/sluice/audit"
)

// sizeStage enforces the policy decision's body limits while streaming:
// a request body over MaxRequestBody gets 413 (417 when the client waits
// with Expect: 100-continue), by Content-Length before anything is sent
// upstream, or as soon as a chunked body passes the limit; a response
// over MaxResponseBody gets 502 when its Content-Length says so, else it
// is cut at the limit and the client's response is aborted.
type sizeStage struct{}

func (sizeStage) Name() string { return "size" }

var errRequestBodyTooLarge = errors.New("request body exceeds limit")

func (sizeStage) Request(x *Exchange) *Answer {
	// Not d := x.Decision: the wrapper below would move a copy of the
	// whole decision to the heap on every request, limit or not.
	limit, rule := x.Decision.MaxRequestBody, x.Decision.Rule
	if limit <= 0 {
		return nil
	}
	if r := x.Req; r.ContentLength > limit {
		code := http.StatusRequestEntityTooLarge
		if strings.EqualFold(headerGet(r.Header, "Expect"), "100-continue") {
			code = http.StatusExpectationFailed
		}
		return &Answer{Status: code, Decision: audit.DecisionDeny, Rule: rule, Reason: audit.ReasonRequestTooLarge, Close: true,
			Detail: fmt.Sprintf("request body of %d bytes exceeds the limit of %d", r.ContentLength, limit)}
	}
	x.WrapBody(func(rc io.ReadCloser) io.ReadCloser {
		over := func() {
			x.AbortBody(&Answer{Status: http.StatusRequestEntityTooLarge, Decision: audit.DecisionDeny, Rule: rule,
				Reason: audit.ReasonRequestTooLarge, Close: true, Detail: fmt.Sprintf("request body exceeds the limit of %d bytes", limit)})
		}
		return &limitedBody{ReadCloser: rc, left: limit, over: over}
	})
	return nil
}

func (sizeStage) Response(x *Exchange, resp *http.Response) *Answer {
	d := x.Decision
	limit := d.MaxResponseBody
	if limit <= 0 {
		return nil
	}
	if resp.ContentLength > limit {
		return &Answer{Status: http.StatusBadGateway, Decision: audit.DecisionDeny, Rule: d.Rule, Reason: audit.ReasonResponseTooLarge,
			Detail: fmt.Sprintf("response body of %d bytes exceeds the limit of %d", resp.ContentLength, limit)}
	}
	resp.Body = &cutBody{ReadCloser: resp.Body, left: limit, cut: &Cut{Decision: audit.DecisionDeny, Reason: audit.ReasonResponseTooLarge,
		Detail: fmt.Sprintf("response cut at the limit of %d bytes", limit)}}
	return nil
}

// limitedBody refuses a request body past left bytes: it calls over once
// and fails every read from then on.
type limitedBody struct {
	io.ReadCloser
	left int64
	over func()
	done bool
}

func (b *limitedBody) Read(p []byte) (int, error) {
	if b.done {
		return 0, errRequestBodyTooLarge
	}
	n, err := b.ReadCloser.Read(p)
	if b.left -= int64(n); b.left < 0 {
		b.done = true
		b.over()
		return 0, errRequestBodyTooLarge
	}
	return n, err
}

// cutBody passes a response body through up to left bytes; the read that
// would pass the limit returns what fits, and the next one returns cut.
type cutBody struct {
	io.ReadCloser
	left int64
	cut  *Cut
	over bool
}

func (b *cutBody) Read(p []byte) (int, error) {
	if b.over {
		return 0, b.cut
	}
	n, err := b.ReadCloser.Read(p)
	if int64(n) > b.left {
		n, b.over = int(b.left), true
		b.left = 0
		if n == 0 {
			return 0, b.cut
		}
		return n, nil
	}
	b.left -= int64(n)
	return n, err
}

var _ ResponseStage = sizeStage{}
