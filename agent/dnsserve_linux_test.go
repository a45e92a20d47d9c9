package agent

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"

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
