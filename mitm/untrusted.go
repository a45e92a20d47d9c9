package mitm

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strconv"
	"strings"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/workload"
)

// Clients that reject Sluice's certificate (client_untrusted): a client
// without the Sluice CA in its trust store, or one that pins the host's
// certificate, refuses the leaf Sluice mints: it sends an alert
// (unknown_ca, bad_certificate, certificate_unknown; OpenSSL in
// plaintext), hangs up once it has the certificate (Java's HttpClient),
// or closes right after the handshake without a byte (an application
// that pins). The proxy records it
// (DecisionClientUntrusted) and remembers the workload and host for a
// while, so that the policy (tls.onUntrustedClient: passthrough) can pass
// the workload's later connections to that host through undecrypted
// (policy.Conn.ClientUntrusted). The memory is bounded in entries and
// time: a workload can't grow it, and a CA it was given later is used
// again once the entry expires.

const (
	// untrustedSize bounds the (workload, host) pairs remembered; the
	// least recently added go first.
	untrustedSize = 4096
	// untrustedTTL is how long a rejection is remembered.
	untrustedTTL = time.Hour
	// untrustedCloseWindow: a client that completes the handshake and
	// closes within this without sending a byte rejected the
	// certificate after the handshake (certificate pinning in the
	// application, after TLS accepted the chain).
	untrustedCloseWindow = 2 * time.Second
)

// untrustedSet remembers the (workload, host:port) pairs whose client
// rejected Sluice's certificate, each until it expires (checked on
// lookup, so no goroutine sweeps it). Safe for concurrent use.
type untrustedSet struct {
	lru *lru.Cache[string, time.Time] // key -> expiry
	ttl time.Duration
	now func() time.Time
}

func newUntrustedSet(size int, ttl time.Duration) *untrustedSet {
	c, _ := lru.New[string, time.Time](size)
	return &untrustedSet{lru: c, ttl: ttl, now: time.Now}
}

// untrustedKey is the workload as the kernel names it (Identity.Key, as
// the DNS server keys what a workload resolved), its executable when known (another program of the workload is not the
// one that pins), and the host and port, lowercase.
func untrustedKey(id *workload.Identity, host string, port uint16) string {
	var b strings.Builder
	b.WriteString(id.Key())
	b.WriteString("\x00" + id.Exe + "\x00")
	b.WriteString(strings.TrimSuffix(strings.ToLower(host), "."))
	b.WriteString(":" + strconv.Itoa(int(port)))
	return b.String()
}

func (s *untrustedSet) add(id *workload.Identity, host string, port uint16) {
	if host == "" {
		return
	}
	s.lru.Add(untrustedKey(id, host, port), s.now().Add(s.ttl))
}

func (s *untrustedSet) has(id *workload.Identity, host string, port uint16) bool {
	if host == "" || s.lru.Len() == 0 {
		return false
	}
	k := untrustedKey(id, host, port)
	exp, ok := s.lru.Get(k)
	if ok && !s.now().Before(exp) {
		s.lru.Remove(k)
		return false
	}
	return ok
}

// TLS alert descriptions a client sends when it does not accept the
// server's certificate (RFC 8446 section 6.2).
const (
	alertBadCertificate     = 42
	alertCertificateUnknown = 46
	alertUnknownCA          = 48
)

var untrustedAlertNames = map[byte]string{
	alertBadCertificate:     "bad_certificate",
	alertCertificateUnknown: "certificate_unknown",
	alertUnknownCA:          "unknown_ca",
}

// untrustedAlerts are the same alerts as crypto/tls prints them: it
// reports a received alert as a *net.OpError "remote error" whose Err
// prints as the alert's text (the alert type itself is unexported).
var untrustedAlerts = map[string]bool{
	tls.AlertError(alertUnknownCA).Error():          true,
	tls.AlertError(alertBadCertificate).Error():     true,
	tls.AlertError(alertCertificateUnknown).Error(): true,
}

// rejectedCertificate reports whether err, from the server side of a
// client handshake, is the client refusing the certificate.
func rejectedCertificate(err error) bool {
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Op == "remote error" && oe.Err != nil {
		return untrustedAlerts[oe.Err.Error()]
	}
	var ae tls.AlertError
	if errors.As(err, &ae) {
		return untrustedAlerts[ae.Error()]
	}
	return false
}

// alertWatch reads the client's side of a handshake as TLS records and
// keeps the description of a plaintext alert (a record of type alert and
// length 2). OpenSSL (curl, Python) rejects a TLS 1.3 server's
// certificate before it has keys of its own, so it sends the alert in
// plaintext, which crypto/tls, expecting an encrypted record, reports as
// "bad record MAC" instead of the alert. Stop it once the handshake is
// done: then it only passes bytes on.
type alertWatch struct {
	net.Conn
	off    bool
	hdr    [5]byte
	nhdr   int // header bytes seen of the current record
	body   int // body bytes left of the current record
	alert  bool
	first  bool // the next body byte is the record's first
	second bool
	level  byte
	desc   byte
	seen   bool // an alert was read: desc is its description
}

func (w *alertWatch) Read(p []byte) (int, error) {
	n, err := w.Conn.Read(p)
	if !w.off {
		w.scan(p[:n])
	}
	return n, err
}

func (w *alertWatch) scan(b []byte) {
	for len(b) > 0 {
		if w.body == 0 {
			k := copy(w.hdr[w.nhdr:], b)
			w.nhdr += k
			b = b[k:]
			if w.nhdr < len(w.hdr) {
				return
			}
			w.nhdr = 0
			w.body = int(w.hdr[3])<<8 | int(w.hdr[4])
			w.alert = w.hdr[0] == 21 && w.body == 2
			w.first, w.second = w.alert, false
			continue
		}
		k := min(w.body, len(b))
		if w.alert {
			for _, c := range b[:k] {
				switch {
				case w.first:
					w.level, w.first, w.second = c, false, true
				case w.second:
					w.desc, w.second, w.seen = c, false, true
				}
			}
		}
		w.body -= k
		b = b[k:]
	}
}

// rejected reports whether the client sent a plaintext alert that
// refuses the certificate, and names it.
func (w *alertWatch) rejected() (string, bool) {
	if !w.seen {
		return "", false
	}
	name, ok := untrustedAlertNames[w.desc]
	return name, ok
}

// closedAfterHandshake reports whether err, from the first read after
// the client's handshake, is the client closing without a word within
// untrustedCloseWindow of it.
func closedAfterHandshake(err error, handshake time.Time) bool {
	return errors.Is(err, io.EOF) && time.Since(handshake) <= untrustedCloseWindow
}

// clientUntrusted records that the client rejected the certificate minted
// for host, and remembers it for the policy (see untrustedSet).
func (f *flow) clientUntrusted(host string, why string) {
	f.p.untrusted.add(&f.id, host, f.dst.Port)
	rec := f.l4Record()
	rec.Host = host
	rec.Decision, rec.Reason, rec.Error = audit.DecisionClientUntrusted, audit.ReasonClientUntrusted, why
	f.p.emit(rec)
}
