package test

import (
	"io"
	"net"
	"net/netip"
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
