package mitm

import (
	"bytes"
	"crypto/tls"
	"reflect"
	"unsafe"
)

// crypto/tls keeps a connection's input buffers for its whole life: the
// raw record buffer sized by the largest record it read (the ClientHello,
// 1.5-2 KiB with a post-quantum key share, or 16 KiB after one large
// request body), the decrypted view into it, and the handshake buffer
// sized by the ClientHello. It has no API to let go of them, and an idle
// keep-alive connection needs none: about 3.5 KiB of every parked
// connection's 12. releaseTLSInput drops them while a connection is
// parked, empty as they are then; crypto/tls allocates them again, sized
// to the next record, when it reads again.
//
// The fields are found by name and type once; if a Go release renames or
// retypes them, nothing is released (TestTLSInputFieldsFound fails, so
// the upgrade notices).
var tlsInput = findTLSInput()

type tlsInputFields struct {
	raw, input, hand uintptr // offsets in tls.Conn
	ok               bool
}

func findTLSInput() tlsInputFields {
	t := reflect.TypeFor[tls.Conn]()
	field := func(name string, want reflect.Type) (uintptr, bool) {
		f, ok := t.FieldByName(name)
		return f.Offset, ok && len(f.Index) == 1 && f.Type == want
	}
	buf, rd := reflect.TypeFor[bytes.Buffer](), reflect.TypeFor[bytes.Reader]()
	var f tlsInputFields
	var ok1, ok2, ok3 bool
	f.raw, ok1 = field("rawInput", buf)
	f.input, ok2 = field("input", rd)
	f.hand, ok3 = field("hand", buf)
	f.ok = ok1 && ok2 && ok3
	return f
}

// tlsInputOf returns c's input buffers, or nils when they were not found.
func tlsInputOf(c *tls.Conn) (raw *bytes.Buffer, input *bytes.Reader, hand *bytes.Buffer) {
	if !tlsInput.ok {
		return nil, nil, nil
	}
	p := unsafe.Pointer(c)
	return (*bytes.Buffer)(unsafe.Add(p, tlsInput.raw)), (*bytes.Reader)(unsafe.Add(p, tlsInput.input)), (*bytes.Buffer)(unsafe.Add(p, tlsInput.hand))
}

// releaseTLSInput drops c's input buffers if they hold nothing (a
// partial record stays). The caller must be the goroutine that last read
// from c, with no read under way or to come until it hands c on: c's
// reads take no lock against this.
func releaseTLSInput(c *tls.Conn) {
	raw, input, hand := tlsInputOf(c)
	if raw == nil || raw.Len() != 0 || input.Len() != 0 || hand.Len() != 0 {
		return
	}
	*raw, *input, *hand = bytes.Buffer{}, bytes.Reader{}, bytes.Buffer{}
}
