package mitm

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"regexp"
	"strings"
	"sync"

	"golang.org/x/crypto/bcrypt"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/config"
	"github.com/sluicehq/sluice/workload"
)

// clientGate is who may use the explicit proxy (proxy.clients): client
// addresses in allowCIDRs (all when empty) and, with a users file, only
// requests carrying one user's Proxy-Authorization Basic credentials.
// It is immutable once built, except for the bcrypt cache.
type clientGate struct {
	cidrs []netip.Prefix
	users map[string]userSecret // nil: no authentication

	mu       sync.Mutex
	verified map[string][32]byte // user: SHA-256 of the last password bcrypt accepted
}

// userSecret is a user's stored secret: a plain password, its SHA-256, or a
// bcrypt hash.
type userSecret struct {
	sum    [32]byte // SHA-256 of the password (plain and sha256: forms)
	bcrypt []byte   // a bcrypt hash, when the file holds one
}

// userName is what a user may be called: it becomes the workload's pod
// name and a label value.
var userName = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$`)

// newClientGate builds the gate of c, reading its users file.
func newClientGate(c config.Clients) (*clientGate, error) {
	g := &clientGate{verified: map[string][32]byte{}}
	for i, s := range c.AllowCIDRs {
		pfx, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("proxy.clients.allowCIDRs[%d] %q: not a CIDR range, write it as e.g. \"10.0.0.0/8\"", i, s)
		}
		g.cidrs = append(g.cidrs, pfx.Masked())
	}
	if c.UsersFile != "" {
		b, err := os.ReadFile(c.UsersFile)
		if err != nil {
			return nil, fmt.Errorf("proxy.clients.usersFile: %w", err)
		}
		if g.users, err = parseUsers(b); err != nil {
			return nil, fmt.Errorf("proxy.clients.usersFile %s: %w", c.UsersFile, err)
		}
	}
	return g, nil
}

// parseUsers reads "name:userSecret" lines; blank lines and lines starting
// with # are skipped. A userSecret is a password, "sha256:" and the hex
// SHA-256 of the password, or a bcrypt hash ($2a$, $2b$, $2y$). Every
// problem is reported at once, by line, never with the userSecret.
func parseUsers(b []byte) (map[string]userSecret, error) {
	users := map[string]userSecret{}
	var errs []error
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, sec, ok := strings.Cut(line, ":")
		switch {
		case !ok || sec == "":
			errs = append(errs, fmt.Errorf("line %d: want name:password, name:sha256:HEX or name:BCRYPT", n))
			continue
		case !userName.MatchString(name):
			errs = append(errs, fmt.Errorf("line %d: user %q: use letters, digits, '.', '_' and '-' (at most 63, alphanumeric at both ends)", n, name))
			continue
		}
		if _, dup := users[name]; dup {
			errs = append(errs, fmt.Errorf("line %d: user %q is listed twice: keep one line", n, name))
			continue
		}
		var s userSecret
		switch {
		case strings.HasPrefix(sec, "sha256:"):
			h, err := hex.DecodeString(sec[len("sha256:"):])
			if err != nil || len(h) != sha256.Size {
				errs = append(errs, fmt.Errorf("line %d: user %q: sha256: wants 64 hex digits, e.g. from `printf %%s PASSWORD | sha256sum`", n, name))
				continue
			}
			copy(s.sum[:], h)
		case strings.HasPrefix(sec, "$2a$") || strings.HasPrefix(sec, "$2b$") || strings.HasPrefix(sec, "$2y$"):
			if _, err := bcrypt.Cost([]byte(sec)); err != nil {
				errs = append(errs, fmt.Errorf("line %d: user %q: not a bcrypt hash (%v), e.g. from `htpasswd -nbB NAME PASSWORD`", n, name, err))
				continue
			}
			s.bcrypt = []byte(sec)
		default:
			s.sum = sha256.Sum256([]byte(sec))
		}
		users[name] = s
	}
	if err := sc.Err(); err != nil {
		errs = append(errs, err)
	}
	if len(users) == 0 && len(errs) == 0 {
		errs = append(errs, errors.New("no users: add name:password lines, or unset usersFile"))
	}
	return users, errors.Join(errs...)
}

// allowAddr reports whether a client at a may use the proxy.
func (g *clientGate) allowAddr(a netip.Addr) bool {
	if len(g.cidrs) == 0 {
		return true
	}
	a = a.Unmap()
	for _, p := range g.cidrs {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// authenticate checks a request's Proxy-Authorization header value
// against the users file: the user's name, or a fixed reason when there
// is none (missing) or it is wrong (invalid).
func (g *clientGate) authenticate(header string) (user, reason string) {
	if header == "" {
		return "", audit.ReasonProxyAuthMissing
	}
	r := http.Request{Header: http.Header{"Authorization": {header}}}
	name, pass, ok := r.BasicAuth()
	if !ok {
		return "", audit.ReasonProxyAuthInvalid
	}
	s, known := g.users[name]
	sum := sha256.Sum256([]byte(pass))
	if !known {
		return "", audit.ReasonProxyAuthInvalid
	}
	if s.bcrypt == nil {
		if subtle.ConstantTimeCompare(sum[:], s.sum[:]) != 1 {
			return "", audit.ReasonProxyAuthInvalid
		}
		return name, ""
	}
	// bcrypt is slow on purpose; a client sends its credentials on every
	// request, so the last password bcrypt accepted is remembered by hash.
	g.mu.Lock()
	v, ok := g.verified[name]
	g.mu.Unlock()
	if ok && subtle.ConstantTimeCompare(sum[:], v[:]) == 1 {
		return name, ""
	}
	if bcrypt.CompareHashAndPassword(s.bcrypt, []byte(pass)) != nil {
		return "", audit.ReasonProxyAuthInvalid
	}
	g.mu.Lock()
	g.verified[name] = sum
	g.mu.Unlock()
	return name, ""
}

// clientStage admits the explicit proxy's clients (proxy.clients): 403
// outside allowCIDRs; with users, 407 without valid Proxy-Authorization,
// else the flow's workload becomes the user (see workload.ProxyUser) for
// the rules, rate limits, connection slots and records that follow. A
// connection keeps the user it first authenticated as. The header itself
// is hop-by-hop: never forwarded (hop.go) and redacted in records.
type clientStage struct{}

func (clientStage) Name() string { return "clients" }

func (clientStage) Request(x *Exchange) *Answer {
	f := x.f
	g := f.p.clients
	if !f.explicit() || g == nil {
		return nil
	}
	if !g.allowAddr(f.id.Client.Addr()) {
		return &Answer{Status: http.StatusForbidden, Decision: audit.DecisionDeny, Reason: audit.ReasonClientNotAllowed,
			Detail: fmt.Sprintf("client %s is not in proxy.clients.allowCIDRs", f.id.Client.Addr()), Close: true}
	}
	if g.users == nil {
		return nil
	}
	user, why := g.authenticate(headerGet(x.Req.Header, "Proxy-Authorization"))
	x.Req.Header.Del("Proxy-Authorization")
	if why == "" && f.id.Namespace == workload.ProxyNamespace && f.id.Pod != user {
		why = audit.ReasonProxyAuthInvalid // one user per connection
	}
	if why != "" {
		return &Answer{Status: http.StatusProxyAuthRequired, Decision: audit.DecisionDeny, Reason: why,
			Header: http.Header{"Proxy-Authenticate": {`Basic realm="sluice"`}}}
	}
	if f.id.Namespace != workload.ProxyNamespace {
		id := workload.ProxyUser(f.id.Client, user)
		if ok, msg := f.rekeySlot(slotKey(&id)); !ok {
			return &Answer{Status: http.StatusServiceUnavailable, Decision: audit.DecisionError, Reason: audit.ReasonTooManyConns, Detail: msg, Close: true}
		}
		f.id = id
	}
	x.Record.Workload = f.id
	return nil
}

var _ Stage = clientStage{}
