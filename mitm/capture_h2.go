package mitm

import (
	"bytes"
	"encoding/binary"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/sluicehq/sluice/policy"
)

// h2Capture rewrites one direction of an HTTP/2 connection's plaintext on
// its way into the capture. Header values are HPACK-coded, mostly with
// Huffman codes, so a byte scanner never sees them: every header block
// (HEADERS or PUSH_PROMISE and its CONTINUATIONs) is decoded with the
// sender's dynamic table, credential header values and detected secrets
// are replaced by the marker, and the block is encoded again, with no
// dynamic table (a size update to 0 first, then literals never indexed
// for what was redacted), so that a capture reader decodes each block on
// its own whatever the peers' tables held. Other frames pass unchanged,
// streamed without being buffered. A block that does not decode (or a
// frame too long to hold) leaves the capture: after one the sender's
// table is unknown, so the direction's later blocks do too.
type h2Capture struct {
	preface int    // bytes of the client preface still to pass (client side)
	notH2   bool   // the client did not start with the preface: pass all
	head    []byte // an incomplete frame header
	skip    int    // payload bytes of a passing frame still to come
	discard int    // payload bytes of a dropped frame still to come
	frame   []byte // the payload of a header frame being collected
	want    int    // its length
	typ     byte   // its type, flags and stream
	flags   byte
	stream  uint32

	// The block being collected: the frame that began it and its
	// fragments.
	block      []byte
	blockTyp   byte
	blockFlags byte
	blockSID   uint32
	prefix     []byte // priority fields (HEADERS) or promised stream id
	inBlock    bool

	dec    *hpack.Decoder
	enc    *hpack.Encoder
	encBuf bytes.Buffer
	broken bool // a block did not decode: drop header frames
	red    *policy.Inspector
}

const (
	h2Preface = http2.ClientPreface

	// The frame types and flags the rewriter reads, as the bytes of a
	// frame header.
	h2FrameHeaders      = byte(http2.FrameHeaders)
	h2FramePushPromise  = byte(http2.FramePushPromise)
	h2FrameContinuation = byte(http2.FrameContinuation)

	h2FlagEndStream  = byte(http2.FlagHeadersEndStream)
	h2FlagEndHeaders = byte(http2.FlagHeadersEndHeaders)
	h2FlagPadded     = byte(http2.FlagHeadersPadded)
	h2FlagPriority   = byte(http2.FlagHeadersPriority)

	// h2MaxBlock bounds a header block held for rewriting; a longer one
	// leaves the capture.
	h2MaxBlock = 1 << 20
	// h2MaxFrame is the largest frame the rewriter writes: the protocol's
	// initial maximum, which every reader accepts.
	h2MaxFrame = 16384
)

func newH2Capture(client bool) *h2Capture {
	c := &h2Capture{red: policy.Redactor()}
	if client {
		c.preface = len(h2Preface)
	}
	// The sender may grow its table to what the receiver's SETTINGS
	// allow; the capture is lenient up to 64KiB.
	c.dec = hpack.NewDecoder(4096, nil)
	c.dec.SetAllowedMaxDynamicTableSize(64 << 10)
	c.dec.SetMaxStringLength(h2MaxBlock)
	c.enc = hpack.NewEncoder(&c.encBuf)
	c.enc.SetMaxDynamicTableSizeLimit(0)
	return c
}

// Write takes the next bytes of the direction and appends what goes
// into the capture to out.
func (c *h2Capture) Write(out, p []byte) []byte {
	for len(p) > 0 {
		switch {
		case c.notH2:
			return append(out, p...)
		case c.preface > 0:
			at := len(h2Preface) - c.preface
			n := min(c.preface, len(p))
			if string(p[:n]) != h2Preface[at:at+n] {
				c.notH2 = true
				continue
			}
			out = append(out, p[:n]...)
			c.preface -= n
			p = p[n:]
		case c.discard > 0:
			n := min(c.discard, len(p))
			c.discard -= n
			p = p[n:]
		case c.skip > 0:
			n := min(c.skip, len(p))
			out = append(out, p[:n]...)
			c.skip -= n
			p = p[n:]
		case c.want > 0:
			n := min(c.want-len(c.frame), len(p))
			c.frame = append(c.frame, p[:n]...)
			p = p[n:]
			if len(c.frame) == c.want {
				out = c.headerFrame(out, c.frame)
				c.frame, c.want = c.frame[:0], 0
			}
		default:
			n := min(9-len(c.head), len(p))
			c.head = append(c.head, p[:n]...)
			p = p[n:]
			if len(c.head) < 9 {
				continue
			}
			length := int(c.head[0])<<16 | int(c.head[1])<<8 | int(c.head[2])
			c.typ, c.flags, c.stream = c.head[3], c.head[4], binary.BigEndian.Uint32(c.head[5:9])&(1<<31-1)
			switch {
			case c.typ != h2FrameHeaders && c.typ != h2FramePushPromise && c.typ != h2FrameContinuation:
				out = append(out, c.head...)
				c.skip = length
			case length == 0:
				out = c.headerFrame(out, nil)
			case length > h2MaxBlock:
				// Too long to hold: dropped, and the table is lost.
				c.broken, c.discard = true, length
			default:
				c.want = length
			}
			c.head = c.head[:0]
		}
	}
	return out
}

// headerFrame handles a complete HEADERS, PUSH_PROMISE or CONTINUATION
// payload.
func (c *h2Capture) headerFrame(out, pl []byte) []byte {
	if c.broken {
		return out
	}
	switch c.typ {
	case h2FrameHeaders, h2FramePushPromise:
		if c.inBlock {
			c.broken = true // a new block before the last ended
			return out
		}
		pad := 0
		if c.flags&h2FlagPadded != 0 {
			if len(pl) < 1 {
				c.broken = true
				return out
			}
			pad, pl = int(pl[0]), pl[1:]
		}
		n := 0
		if c.typ == h2FramePushPromise {
			n = 4
		} else if c.flags&h2FlagPriority != 0 {
			n = 5
		}
		if len(pl) < n+pad {
			c.broken = true
			return out
		}
		c.prefix = append(c.prefix[:0], pl[:n]...)
		c.block = append(c.block[:0], pl[n:len(pl)-pad]...)
		c.blockTyp, c.blockFlags, c.blockSID = c.typ, c.flags&^h2FlagPadded, c.stream
		c.inBlock = true
	case h2FrameContinuation:
		if !c.inBlock || c.stream != c.blockSID || len(c.block)+len(pl) > h2MaxBlock {
			c.broken = true
			return out
		}
		c.block = append(c.block, pl...)
	}
	if c.flags&h2FlagEndHeaders == 0 {
		return out
	}
	c.inBlock = false
	fields, err := c.dec.DecodeFull(c.block)
	if err != nil {
		c.broken = true
		return out
	}
	c.encBuf.Reset()
	for _, f := range fields {
		v := f.Value
		if policy.IsCredentialHeader(f.Name) {
			v = policy.MarkerOf(len(v))
		} else {
			v, _ = c.red.RedactString(v, policy.InHeaders)
		}
		f.Sensitive = f.Sensitive || v != f.Value
		f.Value = v
		if err := c.enc.WriteField(f); err != nil {
			c.broken = true
			return out
		}
	}
	return c.writeBlock(out, append(c.prefix, c.encBuf.Bytes()...))
}

// writeBlock appends the rewritten block as a HEADERS or PUSH_PROMISE
// frame (without padding) and CONTINUATIONs past h2MaxFrame.
func (c *h2Capture) writeBlock(out, pl []byte) []byte {
	typ, flags := c.blockTyp, c.blockFlags&(h2FlagEndStream|h2FlagPriority)
	for first := true; first || len(pl) > 0; first = false {
		n := min(len(pl), h2MaxFrame)
		f := flags
		if n == len(pl) {
			f |= h2FlagEndHeaders
		}
		out = append(out, byte(n>>16), byte(n>>8), byte(n), typ, f)
		out = binary.BigEndian.AppendUint32(out, c.blockSID)
		out = append(out, pl[:n]...)
		pl = pl[n:]
		typ, flags = h2FrameContinuation, 0
	}
	return out
}
