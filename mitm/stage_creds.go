package mitm

import (
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/policy"
)

// credStage puts credentials in and applies the rule's header changes.
//
// Masked credentials: a request carrying a placeholder sluice:cred:NAME
// (in a header value, a Basic-auth password, or a body) gets the secret
// in its place when the credential is bound to the host the request goes
// to (the name bound to what is dialed, never the Host header alone);
// anywhere else the request is refused 403 and recorded as an
// exfiltration attempt. Then the rule's headers.request changes apply
// (remove, set, add), a ${cred:NAME} in a value expanding to the secret
// for the credential's hosts only; headers.response changes apply to the
// response.
//
// It runs after the content stage, so that the secrets it puts in are
// never taken for secrets the workload leaks, and they appear in no
// record, log or answer: records carry the credentials' names only.
type credStage struct{}

func (credStage) Name() string { return "credentials" }

// errExfiltration ends a body carrying a placeholder for another host.
var errExfiltration = errors.New("credential placeholder sent to a host it is not bound to")

func (credStage) Request(x *Exchange) *Answer {
	d := x.Decision
	cs := d.Credentials
	if cs == nil && d.Headers == nil {
		return nil
	}
	r := x.Req
	host := x.policyHost
	used := x.credsUsed()
	if cs != nil {
		for k, vs := range r.Header {
			for i, v := range vs {
				nv, sub, err := substituteHeader(cs, k, v, host)
				if a := credAnswer(x, sub, err); a != nil {
					return a
				}
				used.add(sub.Used)
				vs[i] = nv
			}
		}
		if policy.HasPlaceholder([]byte(r.URL.RawQuery + r.URL.EscapedPath())) {
			return &Answer{Status: http.StatusForbidden, Decision: audit.DecisionDeny, Rule: d.Rule, Reason: audit.ReasonExfiltration,
				Detail: "credential placeholder in the URL: placeholders are swapped in headers and bodies only"}
		}
	}
	if h := d.Headers; h != nil {
		c := h.Request
		for _, n := range c.Remove {
			r.Header.Del(n)
		}
		for _, hv := range c.Set {
			v, sub, err := hv.Expand(cs, host)
			if a := credAnswer(x, notBound(sub), err); a != nil {
				return a
			}
			used.add(sub.Used)
			r.Header.Set(hv.Name, v)
		}
		for _, hv := range c.Add {
			v, sub, err := hv.Expand(cs, host)
			if a := credAnswer(x, notBound(sub), err); a != nil {
				return a
			}
			used.add(sub.Used)
			r.Header.Add(hv.Name, v)
		}
	}
	if cs == nil || r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 {
		return nil
	}
	if len(cs.BodyFor(host)) > 0 {
		// A secret is rarely as long as its placeholder.
		r.Header.Del("Content-Length")
		r.ContentLength = -1
	}
	x.WrapBody(func(rc io.ReadCloser) io.ReadCloser {
		return &credBody{x: x, src: rc, scan: cs.NewPlaceholderScan(host), used: used}
	})
	return nil
}

// notBound marks a ${cred:NAME} the rule may not send to this host: a
// configuration mistake, not the workload's doing.
func notBound(s policy.Substitution) policy.Substitution {
	if s.Denied != "" {
		s.Denied = "\x00" + s.Denied
	}
	return s
}

func (credStage) Response(x *Exchange, resp *http.Response) *Answer {
	h := x.Decision.Headers
	if h == nil {
		return nil
	}
	c := h.Response
	for _, n := range c.Remove {
		resp.Header.Del(n)
	}
	for _, hv := range c.Set {
		resp.Header.Set(hv.Name, hv.Value)
	}
	for _, hv := range c.Add {
		resp.Header.Add(hv.Name, hv.Value)
	}
	return nil
}

// substituteHeader swaps the placeholders of one header value, also
// inside a Basic-auth Authorization value (base-64 of user:password).
func substituteHeader(cs *policy.Credentials, name, v, host string) (string, policy.Substitution, error) {
	if name == "Authorization" || name == "Proxy-Authorization" {
		if scheme, enc, ok := strings.Cut(v, " "); ok && strings.EqualFold(scheme, "basic") {
			raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(enc))
			if err == nil && policy.HasPlaceholder(raw) {
				nv, sub, err := cs.Substitute(string(raw), host)
				if err != nil || sub.Denied != "" {
					return v, sub, err
				}
				return scheme + " " + base64.StdEncoding.EncodeToString([]byte(nv)), sub, nil
			}
		}
	}
	return cs.Substitute(v, host)
}

// credAnswer is the answer for a refused substitution: 403 for a
// placeholder going where its credential may not (the workload's doing),
// 403 for a rule's ${cred:NAME} not bound to the host, 502 when the
// secret can't be read. Neither names the secret.
func credAnswer(x *Exchange, sub policy.Substitution, err error) *Answer {
	rule := x.Decision.Rule
	switch {
	case err != nil:
		return &Answer{Status: http.StatusBadGateway, Decision: audit.DecisionError, Rule: rule, Reason: audit.ReasonCredentialMissing,
			Detail: err.Error()}
	case strings.HasPrefix(sub.Denied, "\x00"):
		return &Answer{Status: http.StatusForbidden, Decision: audit.DecisionDeny, Rule: rule, Reason: audit.ReasonCredentialNotBound,
			Detail: fmt.Sprintf("credential %s is not bound to %s", sub.Denied[1:], hostOrUnknown(x.policyHost))}
	case sub.Denied != "":
		return &Answer{Status: http.StatusForbidden, Decision: audit.DecisionDeny, Rule: rule, Reason: audit.ReasonExfiltration, Close: true,
			Detail: fmt.Sprintf("placeholder of credential %s sent to %s", sub.Denied, hostOrUnknown(x.policyHost))}
	}
	return nil
}

func hostOrUnknown(h string) string {
	if h == "" {
		return "a host with no bound name"
	}
	return h
}

// credsUsed collects the names of the credentials put in, into the
// record when the exchange finishes.
type credsUsed struct {
	mu    sync.Mutex
	names []string
}

func (x *Exchange) credsUsed() *credsUsed {
	u := &credsUsed{}
	x.OnFinish(func() {
		u.mu.Lock()
		defer u.mu.Unlock()
		x.Record.Credentials = append(x.Record.Credentials, u.names...)
	})
	return u
}

func (u *credsUsed) add(names []string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, n := range names {
		if !slices.Contains(u.names, n) {
			u.names = append(u.names, n)
		}
	}
}

// credBody swaps placeholders in a request body as it streams and
// refuses the rest of a body carrying one for another host.
type credBody struct {
	x    *Exchange
	src  io.ReadCloser
	scan *policy.PlaceholderScan
	used *credsUsed
	buf  []byte
	out  []byte
	err  error
}

func (b *credBody) Read(p []byte) (int, error) {
	for len(b.out) == 0 {
		if b.err != nil {
			return 0, b.err
		}
		if b.buf == nil {
			b.buf = make([]byte, 32<<10)
		}
		n, err := b.src.Read(b.buf)
		var out []byte
		var sub policy.Substitution
		var serr error
		if err == io.EOF {
			out, sub, serr = b.scan.Write(b.buf[:n])
			if serr == nil && sub.Denied == "" {
				var rest []byte
				rest, sub, serr = b.scan.Close()
				out = append(slices.Clip(out), rest...)
			}
		} else {
			out, sub, serr = b.scan.Write(b.buf[:n])
		}
		if a := credAnswer(b.x, sub, serr); a != nil {
			b.x.AbortBody(a)
			b.out, b.err = nil, errExfiltration
			return 0, b.err
		}
		b.used.add(sub.Used)
		b.out, b.err = out, err
	}
	n := copy(p, b.out)
	b.out = b.out[n:]
	return n, nil
}

func (b *credBody) Close() error { return b.src.Close() }

var _ ResponseStage = credStage{}
