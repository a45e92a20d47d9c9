package agent

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

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
// process guessing) finds none, and a taken origin is gone. Another copy
// of a query taken within dnsRecentTTL is told apart (errDNSDuplicate:
// not answered), and an origin older than dnsOriginMaxAge (its datagram
// was dropped unread) names nobody.
func TestDNSUDPOrigins(t *testing.T) {
	peer := netip.MustParseAddrPort("10.1.2.3:41234")
	m := map[string]bpf.SluiceDnsOrigin{}
	write := func(id uint16, at time.Duration) { // what egress does
		k := dnsKey(peer, id)
		m[string(asBytes(&k))] = bpf.SluiceDnsOrigin{O: bpf.SluiceOrigin{Pid: uint32(id)}, At: uint64(at)}
	}
	s := &dnsUDPOrigins{take: func(kb, ob []byte) error {
		v, ok := m[string(kb)]
		if !ok {
			return ebpf.ErrKeyNotExist
		}
		delete(m, string(kb))
		copy(ob, asBytes(&v))
		return nil
	}}
	now := 100 * time.Second
	write(0x4242, now)
	if _, err := s.origin(peer, 0x4243, now); !errors.Is(err, errNoOrigin) {
		t.Fatalf("another id: err %v, want errNoOrigin", err)
	}
	if o, err := s.origin(peer, 0x4242, now); err != nil || o.Pid != 0x4242 {
		t.Fatalf("the query's own id: origin %+v, err %v", o, err)
	}
	now += time.Second
	if _, err := s.origin(peer, 0x4242, now); !errors.Is(err, errDNSDuplicate) {
		t.Fatalf("a second copy of the query: err %v, want errDNSDuplicate", err)
	}
	write(0x4242, now) // a retransmit
	if o, err := s.origin(peer, 0x4242, now); err != nil || o.Pid != 0x4242 {
		t.Fatalf("a retransmit: origin %+v, err %v", o, err)
	}
	now += 2*dnsRecentTTL + time.Millisecond
	if _, err := s.origin(peer, 0x4242, now); !errors.Is(err, errNoOrigin) || errors.Is(err, errDNSDuplicate) {
		t.Fatalf("the same id long after: err %v, want errNoOrigin", err)
	}
	write(0x4244, now-dnsOriginMaxAge-time.Millisecond) // its datagram was never read
	if _, err := s.origin(peer, 0x4244, now); !errors.Is(err, errNoOrigin) {
		t.Fatalf("an origin older than dnsOriginMaxAge: err %v, want errNoOrigin", err)
	}
	if len(m) != 0 {
		t.Errorf("entries left in the map: %d", len(m))
	}
}

// The queries remembered stay bounded: a generation holds at most
// dnsRecentMax, and two generations are kept.
func TestDNSUDPOriginsBounded(t *testing.T) {
	s := &dnsUDPOrigins{}
	now := 100 * time.Second
	for i := 0; i < 3*dnsRecentMax; i++ {
		s.remember(dnsKey(netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, byte(i >> 16), byte(i >> 8)}), uint16(i)), uint16(i)), now)
	}
	if n := len(s.cur) + len(s.prev); n > 2*dnsRecentMax {
		t.Errorf("%d queries remembered, want at most %d", n, 2*dnsRecentMax)
	}
	first := dnsKey(netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, 0}), 0), 0)
	if s.seen(first, now) {
		t.Errorf("the first query is still remembered after %d more", 3*dnsRecentMax)
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

// Any answer the DNS library writes (a message of any id, rcode and
// flags, or bytes that are none) is written whole, and drops the origin
// of the query it answers exactly when it is a FORMERR or NOTIMP, by its
// id (as miekg/dns reads them back).
func FuzzDNSRejectWriter(f *testing.F) {
	f.Add(uint16(0x4242), uint8(dns.RcodeFormatError), true, "api.test.", []byte(nil))
	f.Add(uint16(0x0001), uint8(dns.RcodeNotImplemented), false, "", []byte(nil))
	f.Add(uint16(0xbeef), uint8(dns.RcodeSuccess), true, "x.", []byte{0x42, 0x42, 0x81, 0x81})
	f.Add(uint16(7), uint8(dns.RcodeRefused), false, "", []byte{0x42})
	f.Fuzz(func(t *testing.T, id uint16, rcode uint8, response bool, name string, raw []byte) {
		b := raw
		var want []uint16
		if len(raw) == 0 { // a message the library would write
			m := new(dns.Msg)
			m.Id, m.Rcode, m.Response = id, int(rcode&0xf), response
			if _, ok := dns.IsDomainName(name); ok && name != "" {
				m.Question = []dns.Question{{Name: dns.Fqdn(name), Qtype: dns.TypeA, Qclass: dns.ClassINET}}
			}
			var err error
			if b, err = m.Pack(); err != nil {
				t.Skip()
			}
			if m.Rcode == dns.RcodeFormatError || m.Rcode == dns.RcodeNotImplemented {
				want = []uint16{id}
			}
		} else if m := new(dns.Msg); m.Unpack(raw) == nil && (m.Rcode&0xf == dns.RcodeFormatError || m.Rcode&0xf == dns.RcodeNotImplemented) {
			want = []uint16{m.Id}
		}
		fw := &fakeUDPWriter{peer: &net.UDPAddr{IP: net.IPv4(10, 1, 2, 3), Port: 41234}}
		var ids []uint16
		w := dnsRejectWriter{Writer: fw, rw: fw, drop: func(_ netip.AddrPort, id uint16) { ids = append(ids, id) }}
		if n, err := w.Write(b); err != nil || n != len(b) || len(fw.wrote) != 1 || !bytes.Equal(fw.wrote[0], b) {
			t.Fatalf("write of %d bytes: %d, %v, %d writes", len(b), n, err, len(fw.wrote))
		}
		if len(raw) != 0 && want == nil && len(ids) > 0 {
			return // bytes that are no message: dropping by their first two bytes is harmless
		}
		if !slices.Equal(ids, want) {
			t.Fatalf("% x: dropped ids %v, want %v", b, ids, want)
		}
	})
}
