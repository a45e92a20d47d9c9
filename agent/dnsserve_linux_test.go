package agent

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"slices"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/miekg/dns"

	"github.com/sluicehq/sluice/bpf"
)

// dnsKey lays out a query's key as egress writes it (bpf/dns.h dns_peer):
// 16 address bytes (IPv4 as ::ffff:a.b.c.d), then the port and the DNS
// message id, each in host order.
func TestDNSKey(t *testing.T) {
	for _, tc := range []struct {
		peer string
		id   uint16
		addr []byte
	}{
		{"10.1.2.3:41234", 0x4242, []byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 1, 2, 3}},
		{"[fd00::7]:53", 0x0001, []byte{0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7}},
		{"[::ffff:10.1.2.3]:5353", 0xbeef, []byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 1, 2, 3}},
	} {
		peer := netip.MustParseAddrPort(tc.peer)
		k := dnsKey(peer, tc.id)
		want := append([]byte{}, tc.addr...)
		want = binary.NativeEndian.AppendUint16(want, peer.Port())
		want = binary.NativeEndian.AppendUint16(want, tc.id)
		if got := asBytes(&k); !bytes.Equal(got, want) {
			t.Errorf("dnsKey(%s, %#x) = % x, want % x", tc.peer, tc.id, got, want)
		}
	}
}

// A UDP query finds only the origin written for its own {ip, port, id}:
// another id from the same sender (another query in flight, or a later
// process guessing) finds none, and a taken origin is gone.
func TestWaitOriginDNSKey(t *testing.T) {
	peer := netip.MustParseAddrPort("10.1.2.3:41234")
	stored := dnsKey(peer, 0x4242)
	m := map[string]bpf.SluiceOrigin{string(asBytes(&stored)): {Pid: 7}}
	take := func(kb, ob []byte) error {
		o, ok := m[string(kb)]
		if !ok {
			return ebpf.ErrKeyNotExist
		}
		delete(m, string(kb))
		copy(ob, asBytes(&o))
		return nil
	}
	read := func(id uint16) (bpf.SluiceOrigin, error) {
		k := dnsKey(peer, id)
		return waitOrigin(peer, asBytes(&k), 0, take, nil)
	}
	if _, err := read(0x4243); !errors.Is(err, errNoOrigin) {
		t.Fatalf("another id: err %v, want errNoOrigin", err)
	}
	if o, err := read(0x4242); err != nil || o.Pid != 7 {
		t.Fatalf("the query's own id: origin %+v, err %v", o, err)
	}
	if _, err := read(0x4242); !errors.Is(err, errNoOrigin) {
		t.Fatalf("the same id again after the take: err %v, want errNoOrigin", err)
	}
}

// fakeUDPWriter is the library's side of a UDP query: its sender, and the
// bytes written back.
type fakeUDPWriter struct {
	dns.ResponseWriter
	peer  *net.UDPAddr
	wrote [][]byte
}

func (f *fakeUDPWriter) RemoteAddr() net.Addr { return f.peer }

func (f *fakeUDPWriter) Write(b []byte) (int, error) {
	f.wrote = append(f.wrote, b)
	return len(b), nil
}

// The DNS library's own answers to a datagram it does not hand to
// serveDNS (FORMERR, NOTIMP) drop that datagram's origin, by its sender
// and message id; other answers drop nothing. Every answer is written.
func TestDNSRejectWriter(t *testing.T) {
	q := new(dns.Msg)
	q.SetQuestion("api.test.", dns.TypeA)
	q.Id = 0x4242
	for _, tc := range []struct {
		rcode int
		drop  bool
	}{
		{dns.RcodeFormatError, true},
		{dns.RcodeNotImplemented, true},
		{dns.RcodeSuccess, false},
		{dns.RcodeRefused, false},
		{dns.RcodeNameError, false},
	} {
		f := &fakeUDPWriter{peer: &net.UDPAddr{IP: net.IPv4(10, 1, 2, 3), Port: 41234}}
		type dropped struct {
			peer netip.AddrPort
			id   uint16
		}
		var got []dropped
		w := dnsRejectWriter{Writer: f, rw: f, drop: func(peer netip.AddrPort, id uint16) { got = append(got, dropped{peer, id}) }}
		m := new(dns.Msg)
		m.SetRcode(q, tc.rcode)
		b, err := m.Pack()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write(b); err != nil {
			t.Fatal(err)
		}
		if len(f.wrote) != 1 || !bytes.Equal(f.wrote[0], b) {
			t.Errorf("%s: wrote %d answers, want the one", dns.RcodeToString[tc.rcode], len(f.wrote))
		}
		want := []dropped(nil)
		if tc.drop {
			want = []dropped{{netip.MustParseAddrPort("10.1.2.3:41234"), 0x4242}}
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s: dropped %v, want %v", dns.RcodeToString[tc.rcode], got, want)
		}
	}
}

// dnsAccept rejects (FORMERR, through dnsRejectWriter) what miekg's
// default ignores, a response, and otherwise decides as the default.
func TestDNSAccept(t *testing.T) {
	const qr = 1 << 15
	for _, tc := range []struct {
		name string
		h    dns.Header
		want dns.MsgAcceptAction
	}{
		{"query", dns.Header{Qdcount: 1}, dns.MsgAccept},
		{"response", dns.Header{Bits: qr, Qdcount: 1}, dns.MsgReject},
		{"no question", dns.Header{}, dns.MsgReject},
		{"update", dns.Header{Bits: dns.OpcodeUpdate << 11, Qdcount: 1}, dns.MsgRejectNotImplemented},
	} {
		if got := dnsAccept(tc.h); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}

// Any bytes written as a UDP answer are written whole, never panic, and
// drop an origin exactly when they carry a FORMERR or NOTIMP rcode: by
// the id in their first two bytes.
func FuzzDNSRejectWriter(f *testing.F) {
	f.Add([]byte{0x42, 0x42, 0x81, 0x81})
	f.Add([]byte{0x42, 0x42, 0x81, 0x84, 0, 1})
	f.Add([]byte{0x42, 0x42, 0x81})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		fw := &fakeUDPWriter{peer: &net.UDPAddr{IP: net.IPv4(10, 1, 2, 3), Port: 41234}}
		var ids []uint16
		w := dnsRejectWriter{Writer: fw, rw: fw, drop: func(_ netip.AddrPort, id uint16) { ids = append(ids, id) }}
		if n, err := w.Write(b); err != nil || n != len(b) || len(fw.wrote) != 1 {
			t.Fatalf("write of %d bytes: %d, %v, %d writes", len(b), n, err, len(fw.wrote))
		}
		reject := len(b) >= 4 && (b[3]&0xf == dns.RcodeFormatError || b[3]&0xf == dns.RcodeNotImplemented)
		switch {
		case reject && (len(ids) != 1 || ids[0] != binary.BigEndian.Uint16(b)):
			t.Fatalf("% x: dropped ids %v, want [%#x]", b, ids, binary.BigEndian.Uint16(b))
		case !reject && len(ids) != 0:
			t.Fatalf("% x: dropped ids %v, want none", b, ids)
		}
	})
}
