package mitm

import (
	"net/http"

	"github.com/sluicehq/sluice/audit"
)

// upstreamStage makes sure the request has an upstream connection: a
// decrypted flow dialed (and verified) its upstream before the client's
// handshake, and a failure there answers every request 502 with the
// reason; a plain-HTTP destination is dialed on its first request.
type upstreamStage struct{}

func (upstreamStage) Name() string { return "upstream" }

func (upstreamStage) Request(x *Exchange) *Answer {
	t, rec := x.t, x.Record
	if t.addr.IsValid() {
		rec.DstIP = t.addr.Addr()
		rec.UpstreamAddr = t.addrString(t.addr)
	}
	if t.err != nil {
		return fail(http.StatusBadGateway, t.fail, t.err.Error())
	}
	for !t.useTLS {
		err := t.ensure(x.f)
		if err == nil {
			break
		}
		if x.bal == nil {
			return fail(http.StatusBadGateway, t.fail, err.Error())
		}
		// An upstream group's target that can't be reached: nothing was
		// sent, so any request may go to another target.
		x.bal.done(false)
		if a := x.retarget(true); a != nil {
			if a.Reason == audit.ReasonNoHealthyUpstream {
				a.Detail += "; last failure: " + err.Error()
			}
			return a
		}
		t = x.t
	}
	rec.DstIP = t.addr.Addr()
	rec.UpstreamAddr = t.addrString(t.addr)
	return nil
}

var _ Stage = upstreamStage{}
