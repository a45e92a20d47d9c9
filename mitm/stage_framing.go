package mitm

import (
	"fmt"
	"net/http"

	"github.com/sluicehq/sluice/audit"
)

// framingStage refuses requests whose framing Sluice will not forward:
// a header block over proxy.maxHeaderBytes (431), and an HTTP/1.1 request
// with both Content-Length and Transfer-Encoding or an HTTP/1.0 one with
// Transfer-Encoding (400 and close: request smuggling; RFC 9112 6.1
// calls both faulty framing; headInfo.faultyFraming). net/http's server
// hides both from handlers, so HTTP/1.1 heads come from the flow's
// framing tracker (h1.go).
type framingStage struct{}

func (framingStage) Name() string { return "framing" }

func (framingStage) Request(x *Exchange) *Answer {
	max := x.f.p.cfg.MaxHeaderBytes
	if x.f.h1 != nil {
		if h, ok := x.f.h1.nextHead(); ok {
			if h.size > max {
				return fail(http.StatusRequestHeaderFieldsTooLarge, audit.ReasonHeaderTooLarge,
					fmt.Sprintf("request header block of %d bytes exceeds %d", h.size, max))
			}
			if detail := h.faultyFraming(); detail != "" {
				a := fail(http.StatusBadRequest, audit.ReasonSmuggling, detail)
				a.Close = true
				return a
			}
		}
	}
	if x.Req.ProtoMajor == 2 {
		// The HTTP/2 server's own limit (twice ours) answers 431 without
		// a handler; up to it, this stage answers and records.
		if n := h2HeaderSize(x.Req); n > max {
			return fail(http.StatusRequestHeaderFieldsTooLarge, audit.ReasonHeaderTooLarge,
				fmt.Sprintf("request header list of %d bytes exceeds %d", n, max))
		}
	}
	return nil
}

// h2HeaderSize is the header list size as HTTP/2 counts it (RFC 9113
// 6.5.2: name and value lengths plus 32 per field, pseudo-headers too).
func h2HeaderSize(r *http.Request) int {
	n := len(":method") + len(r.Method) + len(":path") + len(r.URL.RequestURI()) +
		len(":authority") + len(r.Host) + len(":scheme") + len("https") + 4*32
	for k, vs := range r.Header {
		for _, v := range vs {
			n += len(k) + len(v) + 32
		}
	}
	return n
}

var _ Stage = framingStage{}
