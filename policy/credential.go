package policy

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"os"
	"regexp"
	"strings"
)

// PlaceholderPrefix starts a masked credential: the workload holds
// sluice:cred:NAME where the secret would be, and Sluice swaps in the
// secret on the way to the credential's hosts.
const PlaceholderPrefix = "sluice:cred:"

// placeholder and credRef are immutable: a placeholder as the workload
// writes it, and ${cred:NAME} in a rule's header values.
var (
	placeholder = regexp.MustCompile(`sluice:cred:([A-Za-z0-9][A-Za-z0-9_.-]{0,63})`)
	credRef     = regexp.MustCompile(`\$\{cred:([^}]*)\}`)
	credName    = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)
)

// Credentials are the policy's credentials by name. Immutable; nil holds
// none.
type Credentials struct {
	byName map[string]*Cred
	// body is set when a credential is substituted in bodies.
	body bool
}

// Cred is one credential: where its secret is read and where it may go.
type Cred struct {
	Name  string
	file  string
	env   string
	hosts hostSet
	// Body: the placeholder is also replaced in request bodies.
	Body bool
	// getenv reads the agent's environment (os.Getenv; tests replace it).
	getenv func(string) string
}

// ErrNoSecret is returned when a credential's secret can't be read.
var ErrNoSecret = errors.New("credential secret unavailable")

func compileCredentials(cs []Credential, getenv func(string) string) *Credentials {
	if len(cs) == 0 {
		return nil
	}
	out := &Credentials{byName: map[string]*Cred{}}
	for _, c := range cs {
		out.byName[c.Name] = &Cred{Name: c.Name, file: c.File, env: c.Env, hosts: newHostSet(c.Hosts), Body: c.Body, getenv: getenv}
		out.body = out.body || c.Body
	}
	return out
}

// Get returns the named credential, or nil.
func (cs *Credentials) Get(name string) *Cred {
	if cs == nil {
		return nil
	}
	return cs.byName[name]
}

// Env returns the environment variables credentials are read from: a
// command Sluice starts must not inherit them.
func (cs *Credentials) Env() []string {
	if cs == nil {
		return nil
	}
	var out []string
	for _, c := range cs.byName {
		if c.env != "" {
			out = append(out, c.env)
		}
	}
	return out
}

// BoundTo reports whether the secret may be sent to host.
func (c *Cred) BoundTo(host string) bool {
	return host != "" && c.hosts.match(host)
}

// Secret reads the secret: the file (a trailing newline removed) or the
// environment variable. The error names the credential and the source,
// never the value.
func (c *Cred) Secret() (string, error) {
	var v string
	switch {
	case c.file != "":
		b, err := os.ReadFile(c.file)
		if err != nil {
			return "", fmt.Errorf("credential %s: %w: %w", c.Name, ErrNoSecret, unwrapPath(err))
		}
		v = strings.TrimRight(string(b), "\r\n")
	case c.env != "":
		v = c.getenv(c.env)
	}
	if v == "" {
		return "", fmt.Errorf("credential %s: %w: %s", c.Name, ErrNoSecret, c.source())
	}
	if strings.ContainsAny(v, "\r\n\x00") {
		return "", fmt.Errorf("credential %s: %w: %s holds a line break or NUL", c.Name, ErrNoSecret, c.source())
	}
	return v, nil
}

func (c *Cred) source() string {
	if c.file != "" {
		return "file " + c.file + " is empty"
	}
	return "environment variable " + c.env + " is empty or unset"
}

// unwrapPath keeps the cause of a file error without repeating the path.
func unwrapPath(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return fmt.Errorf("%s %s: %w", pe.Op, pe.Path, pe.Err)
	}
	return err
}

// Substitution is the outcome of replacing placeholders in one value.
type Substitution struct {
	// Used names the credentials whose secret was put in.
	Used []string
	// Denied names a placeholder's credential that is not bound to the
	// host (or does not exist): the request must be refused.
	Denied string
}

// HasPlaceholder reports whether b holds a placeholder.
func HasPlaceholder(b []byte) bool { return bytes.Contains(b, []byte(PlaceholderPrefix)) }

// Substitute replaces every placeholder in s with its secret when the
// credential is bound to host. The first placeholder that is not stops
// it: s is returned unchanged with Denied set.
func (cs *Credentials) Substitute(s, host string) (string, Substitution, error) {
	var sub Substitution
	if !strings.Contains(s, PlaceholderPrefix) {
		return s, sub, nil
	}
	ms := placeholder.FindAllStringSubmatchIndex(s, -1)
	var b strings.Builder
	last := 0
	for _, m := range ms {
		name := s[m[2]:m[3]]
		c := cs.Get(name)
		if c == nil || !c.BoundTo(host) {
			sub.Denied = name
			return s, sub, nil
		}
		v, err := c.Secret()
		if err != nil {
			return s, sub, err
		}
		b.WriteString(s[last:m[0]])
		b.WriteString(v)
		last = m[1]
		if !containsStr(sub.Used, name) {
			sub.Used = append(sub.Used, name)
		}
	}
	b.WriteString(s[last:])
	return b.String(), sub, nil
}

func containsStr(ss []string, s string) bool {
	for _, v := range ss {
		if v == s {
			return true
		}
	}
	return false
}

// BodyFor returns the credentials substituted in request bodies to host,
// or nil when none is.
func (cs *Credentials) BodyFor(host string) []*Cred {
	if cs == nil || !cs.body {
		return nil
	}
	var out []*Cred
	for _, c := range cs.byName {
		if c.Body && c.BoundTo(host) {
			out = append(out, c)
		}
	}
	return out
}

// HeaderRules are a rule's compiled header changes.
type HeaderRules struct {
	Request, Response HeaderChanges
}

// HeaderChanges change one header block: Remove, then Set, then Add.
type HeaderChanges struct {
	Remove   []string
	Set, Add []HeaderValue
}

// HeaderValue is a header to set or add; Value may hold ${cred:NAME}
// references, expanded by Expand.
type HeaderValue struct {
	Name  string
	Value string
	// Creds names the credentials Value refers to.
	Creds []string
}

func compileHeaders(h *Headers) *HeaderRules {
	if h == nil {
		return nil
	}
	return &HeaderRules{Request: compileOps(h.Request), Response: compileOps(h.Response)}
}

func compileOps(o HeaderOps) HeaderChanges {
	var c HeaderChanges
	for _, n := range o.Remove {
		c.Remove = append(c.Remove, http.CanonicalHeaderKey(n))
	}
	c.Set = headerValues(o.Set)
	c.Add = headerValues(o.Add)
	return c
}

func headerValues(m map[string]string) []HeaderValue {
	var out []HeaderValue
	for k, v := range m {
		hv := HeaderValue{Name: http.CanonicalHeaderKey(k), Value: v}
		for _, r := range credRef.FindAllStringSubmatch(v, -1) {
			hv.Creds = append(hv.Creds, r[1])
		}
		out = append(out, hv)
	}
	// Map order is random: apply in a stable order.
	sortValues(out)
	return out
}

func sortValues(v []HeaderValue) {
	for i := 1; i < len(v); i++ {
		for j := i; j > 0 && v[j].Name < v[j-1].Name; j-- {
			v[j], v[j-1] = v[j-1], v[j]
		}
	}
}

// Expand returns the value with each ${cred:NAME} replaced by the secret.
// A credential not bound to host is refused (Substitution.Denied), so a
// rule can't send a secret where its credential may not go.
func (hv HeaderValue) Expand(cs *Credentials, host string) (string, Substitution, error) {
	var sub Substitution
	if len(hv.Creds) == 0 {
		return hv.Value, sub, nil
	}
	var err error
	out := credRef.ReplaceAllStringFunc(hv.Value, func(ref string) string {
		name := credRef.FindStringSubmatch(ref)[1]
		c := cs.Get(name)
		if c == nil || !c.BoundTo(host) {
			if sub.Denied == "" {
				sub.Denied = name
			}
			return ""
		}
		v, e := c.Secret()
		if e != nil && err == nil {
			err = e
		}
		if !containsStr(sub.Used, name) {
			sub.Used = append(sub.Used, name)
		}
		return v
	})
	if sub.Denied != "" || err != nil {
		return "", sub, err
	}
	return out, sub, nil
}

// prefixTail is where the longest end of b that begins (or is)
// PlaceholderPrefix starts; len(b) for none.
func prefixTail(b []byte) int {
	for p := max(0, len(b)-len(PlaceholderPrefix)); p < len(b); p++ {
		if strings.HasPrefix(PlaceholderPrefix, string(b[p:])) {
			return p
		}
	}
	return len(b)
}

// PlaceholderScan finds placeholders in a request body as it streams,
// holding back between pieces only a placeholder that may still grow, or
// an end of the piece that may begin one. A
// placeholder whose credential is bound to the host and substituted in
// bodies (Credential.Body) is replaced by its secret; any other is
// Denied. Not safe for concurrent use.
type PlaceholderScan struct {
	cs   *Credentials
	host string
	buf  []byte
	rel  int
	sub  Substitution
}

// NewPlaceholderScan starts the scan of one body to host.
func (cs *Credentials) NewPlaceholderScan(host string) *PlaceholderScan {
	return &PlaceholderScan{cs: cs, host: host}
}

// Write scans p with what is held back and returns the bytes to forward
// (valid until the next call). With Denied set in the Substitution,
// nothing more may be forwarded.
func (s *PlaceholderScan) Write(p []byte) ([]byte, Substitution, error) { return s.scan(p, false) }

// Close returns what is held back, scanned as the end of the body.
func (s *PlaceholderScan) Close() ([]byte, Substitution, error) { return s.scan(nil, true) }

func (s *PlaceholderScan) scan(p []byte, final bool) ([]byte, Substitution, error) {
	if s.rel > 0 {
		s.buf = append(s.buf[:0], s.buf[s.rel:]...)
		s.rel = 0
	}
	s.buf = append(s.buf, p...)
	// Hold back from a placeholder that may still be growing, or from a
	// tail that may be the start of the prefix: the rest goes now, so a
	// slow stream is not held.
	hold := len(s.buf)
	if !final {
		hold = prefixTail(s.buf)
	}
	var out []byte
	last := 0
	for _, m := range placeholder.FindAllSubmatchIndex(s.buf, -1) {
		if !final && m[1] == len(s.buf) {
			hold = min(hold, m[0])
			break
		}
		name := string(s.buf[m[2]:m[3]])
		c := s.cs.Get(name)
		if c == nil || !c.Body || !c.BoundTo(s.host) {
			s.sub.Denied = name
			return nil, s.sub, nil
		}
		v, err := c.Secret()
		if err != nil {
			return nil, s.sub, err
		}
		out = append(out, s.buf[last:m[0]]...)
		out = append(out, v...)
		last = m[1]
		if !containsStr(s.sub.Used, name) {
			s.sub.Used = append(s.sub.Used, name)
		}
	}
	if hold < last {
		hold = last
	}
	out = append(out, s.buf[last:hold]...)
	s.rel = hold
	return out, s.sub, nil
}
