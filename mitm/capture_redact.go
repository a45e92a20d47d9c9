package mitm

import (
	"github.com/sluicehq/sluice/pcap"
	"github.com/sluicehq/sluice/policy"
)

// captureRedactor keeps secrets out of the pcapng capture unless the
// rule says captureSecrets: each direction's plaintext goes through a
// body scanner that overwrites credential header values (Authorization,
// Cookie, Set-Cookie, API-key headers) and every built-in detector's
// matches with a marker of the same length, so the capture's framing
// stays valid. On an HTTP/2 connection the header blocks are HPACK-coded
// (mostly Huffman), which no byte scanner reads: h2Capture decodes and
// re-encodes them redacted first.
type captureRedactor struct {
	c2s, s2c *policy.BodyScan
	h2c, h2s *h2Capture // nil unless HTTP/2
	buf      []byte
}

func newCaptureRedactor(h2 bool) *captureRedactor {
	in := policy.CaptureRedactor()
	r := &captureRedactor{c2s: in.NewBodyScan(nil), s2c: in.NewBodyScan(nil)}
	if h2 {
		r.h2c, r.h2s = newH2Capture(true), newH2Capture(false)
	}
	return r
}

func (r *captureRedactor) dir(fromClient bool) (*policy.BodyScan, *h2Capture) {
	if fromClient {
		return r.c2s, r.h2c
	}
	return r.s2c, r.h2s
}

// Redact implements pcap.Redactor.
func (r *captureRedactor) Redact(fromClient bool, p []byte) []byte {
	s, h := r.dir(fromClient)
	if h != nil {
		r.buf = h.Write(r.buf[:0], p)
		p = r.buf
	}
	out, _ := s.Write(p) // a redactor never blocks
	return out
}

// Flush implements pcap.Redactor. An HTTP/2 frame cut by the end of the
// flow is left out.
func (r *captureRedactor) Flush(fromClient bool) []byte {
	s, _ := r.dir(fromClient)
	out, _ := s.Close()
	return out
}

var _ pcap.Redactor = (*captureRedactor)(nil)
