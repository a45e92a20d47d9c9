package policy

import (
	"fmt"
	"regexp"
	"strings"
)

// Content actions, strongest first.
const (
	ActionBlock  = "block"
	ActionRedact = "redact"
	ActionAudit  = "audit"
)

// Parts of a request a content rule looks at.
const (
	InHeaders = "headers"
	InURL     = "url"
	InBody    = "body"
)

// defaultMaxDecompressed is maxDecompressed when the rule leaves it unset.
const defaultMaxDecompressed = 10 << 20

// Marker is what redaction writes over a secret, repeated and cut to the
// secret's length so that lengths (Content-Length, header sizes) stay the
// same. It is letters only, valid in headers, URLs, JSON strings and
// base-64.
const Marker = "REDACTED"

// Finding is one match of a content rule: the detector or pattern name,
// the part it was found in and the action of the rule that matched.
// A finding never holds the secret.
type Finding struct {
	Detector string
	In       string
	Action   string
}

// Inspector is a rule's compiled content rules: what to look for in each
// part of a request. Immutable and safe for concurrent use; nil inspects
// nothing.
type Inspector struct {
	rules []contentRule
	// MaxDecompressed bounds the inspection of a gzip, deflate, br or zstd body.
	MaxDecompressed int64
	// BlockUninspectable: a body that can't be inspected is refused.
	BlockUninspectable bool
}

type contentRule struct {
	action   string
	in       [3]bool // headers, url, body
	matchers []*detector
}

// Redactor is the set of every built-in detector, redacting: what body
// logging and captures apply.
func Redactor() *Inspector {
	return &Inspector{rules: []contentRule{{action: ActionRedact, in: [3]bool{true, true, true}, matchers: detectors}}}
}

// credentialHeaders are the headers whose values are credentials,
// lower case.
var credentialHeaders = []string{"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "api-key",
	"x-auth-token", "x-goog-api-key", "x-amz-security-token", "anthropic-api-key", "openai-api-key", "private-token", "x-gitlab-token"}

// IsCredentialHeader reports whether the header name carries a
// credential (Authorization, Cookie, API-key headers): what a capture
// never shows.
func IsCredentialHeader(name string) bool {
	for _, h := range credentialHeaders {
		if strings.EqualFold(name, h) {
			return true
		}
	}
	return false
}

// MarkerOf is the marker cut to n bytes: what redaction writes over a
// secret of that length.
func MarkerOf(n int) string {
	b := make([]byte, n)
	redact(b)
	return string(b)
}

// credentialHeader finds the values of the headers that carry
// credentials in an HTTP/1.x head (a capture's plaintext).
var credentialHeader = &detector{
	name:  "credential-header",
	doc:   "the value of an Authorization, Proxy-Authorization, Cookie, Set-Cookie or API-key header line",
	re:    regexp.MustCompile(`(?im)^(?:` + strings.Join(credentialHeaders, "|") + `)[ \t]*:[ \t]*([^\r\n]*[^\r\n \t])`),
	group: 1,
}

// CaptureRedactor redacts what a capture must not hold: credential
// header values and every built-in detector's matches.
func CaptureRedactor() *Inspector {
	return &Inspector{rules: []contentRule{{action: ActionRedact, in: [3]bool{true, true, true},
		matchers: append([]*detector{credentialHeader}, detectors...)}}}
}

// compileContent compiles a rule's content section; at is the rule's
// path for errors.
func compileContent(c *Content, at string) (*Inspector, error) {
	if c == nil {
		return nil, nil
	}
	in := &Inspector{MaxDecompressed: defaultMaxDecompressed, BlockUninspectable: c.OnUninspectable != "allow"}
	if c.MaxDecompressed != "" {
		n, err := ParseSize(c.MaxDecompressed)
		if err != nil {
			return nil, &Problem{Path: at + ".content.maxDecompressed", Value: c.MaxDecompressed, Msg: err.Error()}
		}
		in.MaxDecompressed = n
	}
	for i, m := range c.Match {
		cr := contentRule{action: m.Action}
		if len(m.In) == 0 {
			cr.in = [3]bool{true, true, true}
		}
		for _, w := range m.In {
			switch w {
			case InHeaders:
				cr.in[0] = true
			case InURL:
				cr.in[1] = true
			case InBody:
				cr.in[2] = true
			}
		}
		for _, name := range m.Detectors {
			if name == "all" {
				cr.matchers = append(cr.matchers, detectors...)
				continue
			}
			d := detectorByName(name)
			if d == nil {
				return nil, &Problem{Path: fmt.Sprintf("%s.content.match[%d].detectors", at, i), Value: name, Msg: "unknown detector"}
			}
			cr.matchers = append(cr.matchers, d)
		}
		for j, p := range m.Patterns {
			re, err := regexp.Compile(p.Regex)
			if err != nil {
				return nil, &Problem{Path: fmt.Sprintf("%s.content.match[%d].patterns[%d].regex", at, i, j), Value: p.Regex, Msg: err.Error()}
			}
			cr.matchers = append(cr.matchers, &detector{name: p.Name, re: re})
		}
		in.rules = append(in.rules, cr)
	}
	return in, nil
}

// Inspects reports whether any content rule looks at part (InHeaders,
// InURL or InBody).
func (in *Inspector) Inspects(part string) bool {
	if in == nil {
		return false
	}
	i := partIndex(part)
	for _, r := range in.rules {
		if r.in[i] {
			return true
		}
	}
	return false
}

func partIndex(part string) int {
	switch part {
	case InHeaders:
		return 0
	case InURL:
		return 1
	default:
		return 2
	}
}

// Scan inspects b, a whole value (a header value, a URL, or a piece of
// body), as part. Matches of redact rules are overwritten with the marker
// in b itself; the findings are returned in the order found, a block
// finding first when there is one. When final is false, b is the current
// window of a stream that goes on, and only matches that start in the
// part of b that is released now (all but the last maxMatch bytes) count:
// a match starting later may still grow with the next bytes, and is found
// by the next scan, which sees it with the bytes that follow (see
// BodyScan).
func (in *Inspector) Scan(b []byte, part string, final bool) []Finding {
	settled := len(b)
	if !final {
		settled -= maxMatch
	}
	out, _ := in.scan(b, part, 0, settled, nil)
	return out
}

// scan is Scan counting the matches that start in [from, settled) (the
// bytes before from are context, scanned before); hc, when not nil,
// holds the prefilter's hits of b's start from the last scan of the same
// stream. changed reports a redaction.
func (in *Inspector) scan(b []byte, part string, from, settled int, hc *hitCache) (out []Finding, changed bool) {
	if in == nil || len(b) == 0 {
		return nil, false
	}
	pi := partIndex(part)
	var hits []hit
	found := false // the prefilter ran over b
	if hc == nil {
		hc = &hitCache{}
	}
	for _, r := range in.rules {
		if !r.in[pi] {
			continue
		}
		for _, d := range r.matchers {
			var sps [][2]int
			if d.id == 0 {
				sps = d.match(b, 0, nil)
			} else {
				if !found {
					hits, found = hc.update(b), true
				}
				sps = d.spans(b, hits)
			}
			for _, sp := range sps {
				if sp[0] < from || sp[0] >= settled {
					continue
				}
				if r.action == ActionRedact {
					redact(b[sp[0]:sp[1]])
					changed = true
				}
				out = append(out, Finding{Detector: d.name, In: part, Action: r.action})
				if r.action == ActionBlock {
					// A block ends the request: put it first and stop.
					return append([]Finding{out[len(out)-1]}, out[:len(out)-1]...), changed
				}
			}
		}
	}
	return out, changed
}

// redact overwrites b with the marker, repeated.
func redact(b []byte) {
	for i := range b {
		b[i] = Marker[i%len(Marker)]
	}
}

// RedactString returns s with every match of the inspector's redact
// rules replaced, and the findings.
func (in *Inspector) RedactString(s, part string) (string, []Finding) {
	b := []byte(s)
	f := in.Scan(b, part, true)
	if len(f) == 0 {
		return s, nil
	}
	return string(b), f
}

// spans are the spans of d's secrets in b, validated, given the
// prefilter's hits in b: a built-in detector runs its expression only
// around its keywords (reach bytes either side), which keeps scanning
// fast on ordinary traffic.
func (d *detector) spans(b []byte, hits []hit) [][2]int {
	if d.find != nil {
		any := false
		d.eachHit(hits, func(int, int, int) { any = true })
		if !any {
			return nil
		}
		return d.find(d, b, hits)
	}
	back, fwd := d.reach()
	var out [][2]int
	cur := [2]int{-1, -1}
	d.eachHit(hits, func(h, n, _ int) {
		r := [2]int{max(0, h-back), min(len(b), h+n+fwd)}
		switch {
		case cur[0] < 0:
			cur = r
		case r[0] <= cur[1]:
			cur[1] = max(cur[1], r[1])
		default:
			out = d.match(b[cur[0]:cur[1]], cur[0], out)
			cur = r
		}
	})
	if cur[0] < 0 {
		return nil
	}
	return d.match(b[cur[0]:cur[1]], cur[0], out)
}

// reach is how far before and after a keyword d's secret may extend.
func (d *detector) reach() (back, fwd int) {
	back, fwd = 32, 320
	if d.back > 0 {
		back = d.back
	}
	if d.fwd > 0 {
		fwd = d.fwd
	}
	return back, fwd
}

// match appends the validated secrets of d's expression in b, offset
// by off, to out.
func (d *detector) match(b []byte, off int, out [][2]int) [][2]int {
	for _, m := range d.re.FindAllSubmatchIndex(b, -1) {
		s, e := m[2*d.group], m[2*d.group+1]
		if s < 0 || s == e {
			continue
		}
		if d.valid != nil && !d.valid(b[s:e]) {
			continue
		}
		out = append(out, [2]int{off + s, off + e})
	}
	return out
}

// BodyScan scans a body as it streams, in pieces of any size, holding at
// most maxMatch bytes back: a secret that straddles two pieces is found
// and redacted before any of it is released, and a match is judged with
// maxMatch bytes of what follows it (or the body's end), so where the
// pieces are cut does not change what is found. At a pause in the body,
// Flush releases more: all but the bytes a secret still being written
// could cover. It is not safe for concurrent use (one body is read by one
// goroutine).
type BodyScan struct {
	in *Inspector
	// buf is the window: up to scanContext bytes already released (the
	// context a match's start is judged with), then the bytes held back.
	buf  []byte
	sent int // bytes of buf released
	seen map[string]bool
	hits hitCache // the prefilter's hits in buf
	// changed: the last scan redacted bytes of buf (its hits are stale).
	changed bool
	// Found receives each finding once per detector name (a finding
	// inside the held-back window is seen again by the next scan).
	Found func(Finding)
}

// scanContext is how many released bytes the window keeps before the
// held-back ones: more than any detector looks back from its keyword.
const scanContext = 512

// NewBodyScan starts the scan of one body.
func (in *Inspector) NewBodyScan(found func(Finding)) *BodyScan {
	return &BodyScan{in: in, seen: map[string]bool{}, Found: found}
}

// Write scans p with what is held back and returns the bytes now safe to
// release (redacted), and the block finding when a block rule matched
// (nothing more may be released then). The returned slice is valid until
// the next call.
func (s *BodyScan) Write(p []byte) ([]byte, *Finding) {
	s.compact()
	s.buf = append(s.buf, p...)
	return s.release(len(s.buf) - maxMatch)
}

// Close scans what is held back as the end of the body and returns it.
func (s *BodyScan) Close() ([]byte, *Finding) {
	s.compact()
	return s.release(len(s.buf))
}

// Flush is for a pause in the body (the client sends nothing for a
// while): it releases what is held back except the bytes that a secret
// still being written could cover, so a slow stream is not held until
// maxMatch bytes gather. What it releases is what Close would, had the
// body ended here, and no byte a later scan could find in a secret. A
// rule with its own patterns (which have no keywords to bound them)
// releases nothing more than Write does.
func (s *BodyScan) Flush() ([]byte, *Finding) {
	s.compact()
	return s.release(s.in.releasable(s.buf, &s.hits))
}

// Held is the number of bytes held back.
func (s *BodyScan) Held() int { return len(s.buf) - s.sent }

// compact drops the released bytes but the last scanContext: the bytes
// returned by the last call were valid until this one.
func (s *BodyScan) compact() {
	n := max(0, s.sent-scanContext)
	s.hits.drop(n, s.changed)
	if n > 0 {
		s.buf = append(s.buf[:0], s.buf[n:]...)
		s.sent -= n
	}
}

// release scans the window, counting the matches that start in the bytes
// held back before to, and releases those bytes.
func (s *BodyScan) release(to int) ([]byte, *Finding) {
	to = max(to, s.sent)
	fs, changed := s.in.scan(s.buf, InBody, s.sent, to, &s.hits)
	s.changed = changed
	for _, f := range fs {
		s.note(f)
		if f.Action == ActionBlock {
			return nil, &f
		}
	}
	if to == s.sent {
		return nil, nil
	}
	out := s.buf[s.sent:to]
	s.sent = to
	return out, nil
}

func (s *BodyScan) note(f Finding) {
	if s.seen[f.Detector] {
		return
	}
	s.seen[f.Detector] = true
	if s.Found != nil {
		s.Found(f)
	}
}

// releasable is where the bytes that a secret still being written could
// cover begin in the window b (a stream's, whose end is not known).
// A built-in detector's secret is a run of its characters (class)
// beginning with one of its starts, and is found near its keywords:
//   - a secret still to come starts in the run of the detector's
//     characters that ends the window, at one of its starts (or at what
//     may become one);
//   - a keyword already in the window marks what its secret may cover
//     (pending): while that reaches the window's end (a region a keyword
//     yet to come could join, a parse the window cut), or the bytes
//     released, it is held.
//
// With a rule's own pattern on bodies, which nothing bounds, nothing.
func (in *Inspector) releasable(b []byte, hc *hitCache) int {
	q := len(b)
	for _, r := range in.rules {
		if !r.in[partIndex(InBody)] {
			continue
		}
		for _, d := range r.matchers {
			if d.id == 0 {
				return 0
			}
			q = min(q, d.nextStart(b))
		}
	}
	hits := hc.update(b)
	for moved := true; moved && q > 0; {
		moved = false
		for _, h := range hits {
			d := detectors[h.det-1]
			start, end := d.pending(b, h)
			if start >= q {
				continue
			}
			if end >= q || (d.find == nil && end >= len(b)-d.lead()) {
				q, moved = max(start, 0), true
			}
		}
	}
	return max(q, 0)
}

// nextStart is where d's earliest secret that is not complete in b
// could start: the first of d's starts (or a beginning of one cut by
// b's end) in the run of d's characters that ends b; len(b) for none.
func (d *detector) nextStart(b []byte) int {
	run := len(b)
	for run > 0 && d.class.has(b[run-1]) {
		run--
	}
	for p := run; p < len(b); p++ {
		for _, st := range d.starts {
			n := min(len(st), len(b)-p)
			if d.foldStarts && strings.EqualFold(string(b[p:p+n]), st[:n]) || !d.foldStarts && string(b[p:p+n]) == st[:n] {
				return p
			}
		}
	}
	return len(b)
}

// lead is how far before a window's end a keyword that its next bytes
// complete may have its region start: a region joined with it is
// searched again.
func (d *detector) lead() int {
	back, _ := d.reach()
	return back + d.longestKeyword() - 1
}

// longestKeyword is the length of d's longest keyword.
func (d *detector) longestKeyword() int {
	n := 0
	for _, k := range d.keywords {
		n = max(n, len(k))
	}
	return n
}

// pending is the span that d's secret around the keyword hit h may
// cover: its region, or what the detector's own parse says.
func (d *detector) pending(b []byte, h hit) (start, end int) {
	if d.open != nil {
		return d.open(d, b, h)
	}
	back, fwd := d.reach()
	end = int(h.pos) + int(h.n) + fwd
	if d.keyed {
		return int(h.pos) - d.before, end
	}
	return int(h.pos) - back, end
}
