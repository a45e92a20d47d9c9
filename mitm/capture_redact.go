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
// stays valid. HTTP/2 header blocks are HPACK-encoded (often Huffman):
// there only what appears literally is found.
type captureRedactor struct {
	c2s, s2c *policy.BodyScan
}

func newCaptureRedactor() *captureRedactor {
	in := policy.CaptureRedactor()
	return &captureRedactor{c2s: in.NewBodyScan(nil), s2c: in.NewBodyScan(nil)}
}

func (r *captureRedactor) scan(fromClient bool) *policy.BodyScan {
	if fromClient {
		return r.c2s
	}
	return r.s2c
}

// Redact implements pcap.Redactor.
func (r *captureRedactor) Redact(fromClient bool, p []byte) []byte {
	out, _ := r.scan(fromClient).Write(p) // a redactor never blocks
	return out
}

// Flush implements pcap.Redactor.
func (r *captureRedactor) Flush(fromClient bool) []byte {
	out, _ := r.scan(fromClient).Close()
	return out
}

var _ pcap.Redactor = (*captureRedactor)(nil)
