package mitm

import (
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"

	"github.com/sluicehq/sluice/audit"
)

// targetStage finds the request's destination and binds its name to what
// is dialed. A decrypted or tunnelled flow has one destination, opened
// (and verified upstream) for one name: a request naming another host
// gets 421 Misdirected Request (no domain fronting); on one opened for no
// name (no SNI, or an IP), a Host counts only where it resolves to the
// address dialed, else 421 too. Transparent plain
// HTTP has one destination per Host header, whose name counts for policy
// only where it resolves to the original destination address (else the
// request is judged by the address). The explicit proxy takes CONNECT or
// absolute-form http:// requests and dials the URL's host and port.
type targetStage struct{}

func (targetStage) Name() string { return "target" }

func (targetStage) Request(x *Exchange) *Answer {
	f, r, rec := x.f, x.Req, x.Record
	x.host, x.port = f.requestHost(r)
	if f.explicit() && f.fixed == nil && (r.URL.Scheme != "http" || r.URL.Host == "") {
		return fail(http.StatusBadRequest, audit.ReasonNotProxy,
			"the explicit proxy takes CONNECT or absolute-form http:// requests")
	}
	rec.Host = x.host
	t := f.targetFor(x.host, x.port)
	x.t = t
	rec.Port = t.port // the port dialed, whatever the Host header says
	if t.unbound {
		rec.Error = fmt.Sprintf("host %q does not resolve to the destination %s: judged by the address", x.host, f.dst.Addr.Addr())
	}
	x.policyHost = t.conn.Host
	if f.fixed == nil {
		return nil
	}
	if t.conn.Host != "" && !t.connHostIsIP() {
		if !sameHost(x.host, t.conn.Host) {
			return &Answer{Status: http.StatusMisdirectedRequest, Decision: audit.DecisionDeny, Reason: audit.ReasonMisdirected,
				Detail: fmt.Sprintf("request host %q is not %q, the host this connection was opened for (TLS SNI or CONNECT target)", x.host, t.conn.Host)}
		}
		return nil
	}
	// No name is bound to the TLS connection (no SNI, or an IP): a Host
	// that names a host counts where it resolves to the address dialed,
	// else the request is misdirected. Without one (and in a plain-HTTP
	// tunnel to an IP), the policy judges the address and the names known
	// for it (policy.Conn.Names).
	if !t.useTLS || x.host == "" || isIPLiteral(x.host) || len(t.conn.Addrs) == 0 {
		return nil
	}
	addr := t.conn.Addrs[0]
	if t.addr.IsValid() {
		addr = t.addr.Addr()
	}
	if !f.resolvesTo(x.host, addr) {
		return &Answer{Status: http.StatusMisdirectedRequest, Decision: audit.DecisionDeny, Reason: audit.ReasonMisdirected,
			Detail: fmt.Sprintf("request host %q does not resolve to %s, the address this connection goes to", x.host, addr)}
	}
	x.policyHost = x.host
	return nil
}

// requestHost is the request's host without port, and the port when the
// request names one.
func (f *flow) requestHost(r *http.Request) (string, uint16) {
	h := r.Host
	if f.explicit() && f.fixed == nil && r.URL.Host != "" {
		h = r.URL.Host
	}
	host, port := splitHostPort(h)
	if f.explicit() && f.fixed == nil && port == 0 {
		port = 80
	}
	return host, port
}

func splitHostPort(h string) (string, uint16) {
	if strings.IndexByte(h, ':') < 0 {
		// No port, as in most Host headers (an https URL's default
		// port is left out): net.SplitHostPort's "missing port" error
		// would be an allocation per request, for the answer below.
		return strings.ToLower(strings.Trim(h, "[]")), 0
	}
	if host, p, err := net.SplitHostPort(h); err == nil {
		// Fast path for the usual all-digit port; anything else keeps
		// fmt's scanning rules.
		if n, err := strconv.ParseUint(p, 10, 16); err == nil {
			return strings.ToLower(host), uint16(n)
		}
		var n uint16
		if _, err := fmt.Sscanf(p, "%d", &n); err == nil {
			return strings.ToLower(host), n
		}
		return strings.ToLower(host), 0
	}
	return strings.ToLower(strings.Trim(h, "[]")), 0
}

// targetFor picks the destination: the flow's fixed one, one per host
// and port in explicit mode, or one per Host header in transparent plain
// HTTP.
func (f *flow) targetFor(host string, port uint16) *target {
	if f.fixed != nil {
		return f.fixed
	}
	key := host
	if f.explicit() {
		key = net.JoinHostPort(host, strconv.Itoa(int(port)))
	}
	f.mu.Lock()
	t, ok := f.targets[key]
	f.mu.Unlock()
	if ok {
		return t
	}
	if f.explicit() {
		t = f.newTarget(host, port, false)
	} else {
		// Transparent plain HTTP: the Host header is only the client's
		// word for where the original destination is. Policy judges the
		// name only when it resolves to that address; otherwise the
		// request is judged by the address alone.
		policyHost := host
		if f.dst.Addr.IsValid() && host != "" && !f.resolvesTo(host, f.dst.Addr.Addr()) {
			policyHost = ""
		}
		t = f.newTarget(policyHost, f.dst.Port, false)
		t.host = host
		t.unbound = policyHost != host
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.targets == nil {
		f.targets = map[string]*target{}
	}
	if old, ok := f.targets[key]; ok {
		return old
	}
	if len(f.targets) < maxFlowTargets {
		f.targets[key] = t
	}
	return t
}

// maxFlowTargets bounds the destinations one plain-HTTP flow remembers.
const maxFlowTargets = 16

var _ Stage = targetStage{}
