package test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// The topology itself: a host in one namespace reaches a host in another
// through the root namespace, over IPv4 and IPv6, and nothing is left
// behind afterwards.
func TestTopologyRoutesBetweenHosts(t *testing.T) {
	RequireE2E(t)
	tp := NewTopology(t, 2)
	client, server := tp.Hosts[0], tp.Hosts[1]
	for _, dst := range []netip.Addr{server.IP4, server.IP6} {
		ln := server.Listen(t, netip.AddrPortFrom(dst, 8080))
		go func() {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = c.Write([]byte("hello from " + server.Name))
			c.Close()
		}()
		var got []byte
		err := client.Do(func() error {
			c, err := net.DialTimeout("tcp", netip.AddrPortFrom(dst, 8080).String(), 5*time.Second)
			if err != nil {
				return err
			}
			defer c.Close()
			got, err = io.ReadAll(c)
			return err
		})
		if err != nil {
			t.Fatalf("dial %s from %s: %v", dst, client.Name, err)
		}
		if string(got) != "hello from "+server.Name {
			t.Fatalf("got %q", got)
		}
	}
	names := []string{client.Name, server.Name}
	tp.Close()
	for _, n := range names {
		if nsExists(n) {
			t.Errorf("namespace %s still exists after Close", n)
		}
	}
}

// A test namespace reaches only the test ranges: a connect to any other
// address (TEST-NET-1, the IPv6 documentation range) fails at once in
// the namespace with ENETUNREACH, since it has no default route; a test
// address no host holds is refused in the root namespace (unreachable)
// instead of being forwarded; and `ip netns exec` gives the namespace a
// resolv.conf that names its own loopback, removed with the topology.
func TestTopologyRoutesOnlyTestRanges(t *testing.T) {
	RequireE2E(t)
	tp := NewTopology(t, 1)
	h := tp.Hosts[0]
	dial := func(dst netip.AddrPort) error {
		return h.Do(func() error {
			c, err := net.DialTimeout("tcp", dst.String(), 3*time.Second)
			if err == nil {
				c.Close()
			}
			return err
		})
	}
	for _, dst := range []netip.AddrPort{
		netip.MustParseAddrPort("192.0.2.55:80"),
		netip.MustParseAddrPort("[2001:db8::55]:443"),
	} {
		if err := dial(dst); !errors.Is(err, syscall.ENETUNREACH) {
			t.Errorf("connect %v from %s: %v, want ENETUNREACH", dst, h.Name, err)
		}
	}
	// A test-range address outside every host's subnet.
	k := freeSubnets(t, 1)
	for _, dst := range []netip.AddrPort{netip.AddrPortFrom(subnet4(k, 9), 80), netip.AddrPortFrom(subnet6(k, 9), 80)} {
		if err := dial(dst); !errors.Is(err, syscall.EHOSTUNREACH) && !errors.Is(err, syscall.ENETUNREACH) {
			t.Errorf("connect %v (no test host there): %v, want it refused as unreachable", dst, err)
		}
	}
	out, err := h.Exec(context.Background(), "cat", "/etc/resolv.conf").CombinedOutput()
	if err != nil || string(out) != "nameserver 127.0.0.1\n" {
		t.Errorf("resolv.conf in %s = %q (%v), want nameserver 127.0.0.1", h.Name, out, err)
	}
	etc := filepath.Join("/etc/netns", h.Name)
	tp.Close()
	if _, err := os.Stat(etc); !os.IsNotExist(err) {
		t.Errorf("%s left after Close: %v", etc, err)
	}
}

// Two topologies at once get different subnets.
func TestTopologiesDoNotCollide(t *testing.T) {
	RequireE2E(t)
	a, b := NewTopology(t, 2), NewTopology(t, 2)
	seen := map[netip.Addr]bool{}
	for _, h := range append(a.Hosts, b.Hosts...) {
		for _, ad := range []netip.Addr{h.IP4, h.GW4, h.IP6, h.GW6} {
			if seen[ad] {
				t.Errorf("address %v used twice", ad)
			}
			seen[ad] = true
		}
		if !testNet4.Contains(h.IP4) || !testNet6.Contains(h.IP6) {
			t.Errorf("host %s at %v, %v: outside the test ranges", h.Name, h.IP4, h.IP6)
		}
	}
}
