package mitm

import (
	"net/http"
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
	if !t.useTLS {
		if err := t.ensure(x.f); err != nil {
			return fail(http.StatusBadGateway, t.fail, err.Error())
		}
	}
	rec.DstIP = t.addr.Addr()
	rec.UpstreamAddr = t.addrString(t.addr)
	return nil
}

var _ Stage = upstreamStage{}
