package agent

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/cilium/ebpf"
	"github.com/miekg/dns"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/bpf"
	"github.com/sluicehq/sluice/workload"
)

// dnsOriginWait bounds how long a DNS query waits for its sender's
// origin: egress writes it before the datagram is delivered, so this is
// a safety margin, not a normal wait.
const dnsOriginWait = 50 * time.Millisecond

// listenDNS serves Options.DNS on agent.dnsPort, UDP and TCP, on every
// intercept address. The sockets carry the agent's mark.
func (a *Agent) listenDNS() error {
	lc := net.ListenConfig{Control: MarkControl(a.cfg.Mark)}
	h := dns.HandlerFunc(a.serveDNS)
	for _, ad := range []netip.Addr{a.ia.v4, a.ia.v6} {
		if !ad.IsValid() {
			continue
		}
		ap := netip.AddrPortFrom(ad, a.cfg.DNSPort).String()
		udp, tcp := "udp4", "tcp4"
		if ad.Is6() {
			udp, tcp = "udp6", "tcp6"
		}
		pc, err := lc.ListenPacket(a.ctx, udp, ap)
		if err != nil {
			return fmt.Errorf("listen on dns address %s/udp: %w", ap, err)
		}
		ln, err := lc.Listen(a.ctx, tcp, ap)
		if err != nil {
			pc.Close()
			return fmt.Errorf("listen on dns address %s/tcp: %w", ap, err)
		}
		for _, s := range []*dns.Server{{PacketConn: pc, Handler: h}, {Listener: ln, Handler: h}} {
			a.dnsSrvs = append(a.dnsSrvs, s)
			a.wg.Add(1)
			go func() {
				defer a.wg.Done()
				if err := s.ActivateAndServe(); err != nil && a.ctx.Err() == nil {
					a.log.Error("dns server stopped", audit.KeyError, err)
				}
			}()
		}
	}
	return nil
}

// serveDNS names the sender of a query from the kernel's maps and hands
// the query to the DNS server.
func (a *Agent) serveDNS(w dns.ResponseWriter, r *dns.Msg) {
	var id *workload.Identity
	peer, network, ok := remote(w)
	if ok {
		m := a.objs.SluiceDnsPeers // UDP: written by egress per datagram
		if network == "tcp" {
			m = a.objs.SluicePeers // TCP: written by sockops, dropped at close
		}
		o, err := a.peekOrigin(m, peer, dnsOriginWait)
		if err == nil {
			_, got := a.describe(o, peer)
			id = &got
		} else {
			a.log.Warn("dns query without origin", audit.KeyPeer, peer.String(), audit.KeyError, err)
		}
	}
	if id != nil {
		w = a.bypassDNS(w, r)
	}
	a.opts.DNS.Answer(a.ctx, w, r, id)
}

// peekOrigin reads, without deleting, the origin of peer from m, waiting
// up to wait for it to appear.
func (a *Agent) peekOrigin(m *ebpf.Map, peer netip.AddrPort, wait time.Duration) (bpf.SluiceOrigin, error) {
	// As16 writes IPv4 as ::ffff:a.b.c.d, as the kernel does.
	k := bpf.SluicePeerKey{Addr: peer.Addr().As16(), Port: peer.Port()}
	var o bpf.SluiceOrigin
	deadline := time.Now().Add(wait)
	for {
		err := m.Lookup(&k, &o)
		if err == nil {
			return o, nil
		}
		if !errors.Is(err, ebpf.ErrKeyNotExist) {
			return o, fmt.Errorf("look up dns origin of %s: %w", peer, err)
		}
		if time.Now().After(deadline) {
			return o, fmt.Errorf("look up dns origin of %s: %w", peer, errNoOrigin)
		}
		time.Sleep(2 * time.Millisecond)
	}
}
