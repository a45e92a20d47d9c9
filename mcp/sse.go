package mcp

import "bytes"

// Event is one block of a Server-Sent Events stream, up to and including
// the blank line that ends it.
type Event struct {
	// Type is the event field ("" for the default "message"), ID the id
	// field.
	Type, ID string
	// Data is the data lines joined by "\n"; nil when the block had none
	// (only comments or other fields).
	Data []byte
	// Len is how many bytes of the stream the block spans, from the end
	// of the previous block: the blocks' Len add up to the bytes fed. A
	// block ends at the CR of a blank line's CRLF (waiting for the LF
	// would delay it), so that LF counts in the next block.
	Len int
	// Truncated is set when the block was longer than the parser's Max:
	// its fields were dropped, Len is still exact.
	Truncated bool
}

// SSE parses an event stream incrementally (WHATWG HTML, "Parsing an
// event stream"): it is fed the stream as it arrives and reports each
// block as soon as its blank line has been read, so parsing adds no
// delay per event. Lines end in CRLF, LF or CR. It keeps at most Max
// bytes of one block (DefaultMaxEvent when 0). Not safe for concurrent
// use.
type SSE struct {
	Max int

	line    []byte // the line in progress (while the block is within Max)
	lineLen int    // bytes of the line in progress, kept or not
	n       int    // bytes of the block in progress
	over    bool   // the block in progress passed Max
	data    []byte
	hasData bool
	typ, id string
	cr      bool // the last byte fed was a CR (an LF may follow)
	bom     int  // bytes of a leading BOM seen; len(bom) once past it
}

// DefaultMaxEvent is the longest block an SSE keeps (1 MiB).
const DefaultMaxEvent = 1 << 20

var bom = []byte("\xef\xbb\xbf")

// Feed parses p and calls emit for every block p completes, in order.
// The Event's Data is valid until emit returns.
func (s *SSE) Feed(p []byte, emit func(*Event)) {
	for _, c := range p {
		if s.bom < len(bom) {
			// The stream's first bytes may be a BOM, which is skipped
			// (counted in the first block's Len).
			if c == bom[s.bom] {
				s.bom++
				s.n++
				continue
			}
			pre := bom[:s.bom]
			s.bom = len(bom)
			s.n -= len(pre)
			for _, b := range pre {
				s.byte(b, emit)
			}
		}
		s.byte(c, emit)
	}
}

func (s *SSE) byte(c byte, emit func(*Event)) {
	s.n++
	max := s.Max
	if max <= 0 {
		max = DefaultMaxEvent
	}
	if !s.over && s.n > max {
		s.over = true
		s.line, s.data, s.hasData, s.typ, s.id = s.line[:0], s.data[:0], false, "", ""
	}
	if s.cr {
		s.cr = false
		if c == '\n' {
			return // the LF of a CRLF
		}
	}
	switch c {
	case '\r':
		s.cr = true
		s.endLine(emit)
	case '\n':
		s.endLine(emit)
	default:
		s.lineLen++
		if !s.over {
			s.line = append(s.line, c)
		}
	}
}

// endLine handles a complete line: a blank one ends the block.
func (s *SSE) endLine(emit func(*Event)) {
	line, blank := s.line, s.lineLen == 0
	s.line, s.lineLen = s.line[:0], 0
	if blank {
		ev := Event{Type: s.typ, ID: s.id, Len: s.n, Truncated: s.over}
		if s.hasData && !s.over {
			ev.Data = s.data
		}
		emit(&ev)
		s.n, s.over, s.hasData, s.typ, s.id = 0, false, false, "", ""
		s.data = s.data[:0]
		return
	}
	if s.over || line[0] == ':' {
		return
	}
	field, value := line, []byte(nil)
	if i := bytes.IndexByte(line, ':'); i >= 0 {
		field, value = line[:i], line[i+1:]
		if len(value) > 0 && value[0] == ' ' {
			value = value[1:]
		}
	}
	switch string(field) {
	case "data":
		if s.hasData {
			s.data = append(s.data, '\n')
		}
		s.data = append(s.data, value...)
		s.hasData = true
	case "event":
		s.typ = string(value)
	case "id":
		if bytes.IndexByte(value, 0) < 0 {
			s.id = string(value)
		}
	}
}

// Pending is the number of bytes fed since the last block ended.
func (s *SSE) Pending() int { return s.n }
