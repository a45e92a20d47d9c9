package agent

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

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
		ln = dnsListener{Listener: ln, set: &a.dnsTCP, take: func(peer netip.AddrPort) (bpf.SluiceOrigin, error) { return a.takeOriginWait(peer, 0) }}
		udpSrv := &dns.Server{PacketConn: pc, Handler: h, MsgAcceptFunc: dnsAccept, DecorateWriter: a.decorateDNSWriter}
		for _, s := range []*dns.Server{udpSrv, {Listener: ln, Handler: h}} {
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

// dnsAccept is miekg's default MsgAcceptFunc, except that a response
// (QR set) is rejected with FORMERR instead of ignored: every UDP
// datagram the DNS server reads is then either handed to serveDNS or
// answered by the library (FORMERR, NOTIMP) through dnsRejectWriter, and
// both take its origin.
func dnsAccept(dh dns.Header) dns.MsgAcceptAction {
	if act := dns.DefaultMsgAcceptFunc(dh); act != dns.MsgIgnore {
		return act
	}
	return dns.MsgReject
}

// decorateDNSWriter wraps the writer of each UDP query in a
// dnsRejectWriter that drops the query's origin from sluice_dns_peers.
func (a *Agent) decorateDNSWriter(w dns.Writer) dns.Writer {
	rw, ok := w.(dns.ResponseWriter)
	if !ok {
		return w
	}
	return dnsRejectWriter{Writer: w, rw: rw, drop: func(peer netip.AddrPort, id uint16) {
		k := dnsKey(peer, id)
		var o bpf.SluiceOrigin
		_ = a.take(a.objs.SluiceDnsPeers, asBytes(&k), asBytes(&o))
	}}
}

// dnsRejectWriter writes a UDP reply and, when it is FORMERR or NOTIMP,
// drops the origin of the query it answers (drop, by sender and message
// id). The DNS library answers so, without calling serveDNS, a datagram
// whose header it rejects or whose body it can't parse; egress wrote an
// origin for it all the same, which would otherwise stay in the map for
// a later sender from the same {ip, port} with the same id to find.
// serveDNS's own FORMERR answers come after its take, and drop nothing.
type dnsRejectWriter struct {
	dns.Writer
	rw   dns.ResponseWriter
	drop func(peer netip.AddrPort, id uint16)
}

func (w dnsRejectWriter) Write(b []byte) (int, error) {
	if len(b) >= 4 {
		if rc := int(b[3] & 0xf); rc == dns.RcodeFormatError || rc == dns.RcodeNotImplemented {
			if peer, network, ok := remote(w.rw); ok && network == "udp" {
				w.drop(peer, binary.BigEndian.Uint16(b))
			}
		}
	}
	return w.Writer.Write(b)
}

// serveDNS names the sender of a query from the kernel's maps and hands
// the query to the DNS server.
func (a *Agent) serveDNS(w dns.ResponseWriter, r *dns.Msg) {
	var id *workload.Identity
	peer, network, ok := remote(w)
	if ok {
		var o bpf.SluiceOrigin
		var err error
		if network == "tcp" {
			o, err = a.dnsTCP.origin(peer, func() (bpf.SluiceOrigin, error) { return a.takeOriginWait(peer, dnsOriginWait) })
		} else {
			o, err = a.takeDNSOrigin(peer, r.Id, dnsOriginWait)
		}
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

// takeDNSOrigin reads and deletes the origin of the UDP query id from
// peer, waiting up to wait for it to appear. Egress writes it for every
// datagram (a retransmit writes it again), so taking it at each query
// leaves nothing behind for whichever process next sends from the same
// {ip, port}: its queries are refused (no origin), not answered as the
// workload's. Egress writes before the datagram is delivered, so the wait
// is a safety margin; a query with no origin waits it out.
func (a *Agent) takeDNSOrigin(peer netip.AddrPort, id uint16, wait time.Duration) (bpf.SluiceOrigin, error) {
	k := dnsKey(peer, id)
	return waitOrigin(peer, asBytes(&k), wait, func(kb, ob []byte) error { return a.take(a.objs.SluiceDnsPeers, kb, ob) }, nil)
}

// dnsKey is the sluice_dns_peers key of the UDP query id from peer, as
// egress (bpf/dns.h dns_peer) writes it: IPv4 as ::ffff:a.b.c.d, port and
// id in host order.
func dnsKey(peer netip.AddrPort, id uint16) bpf.SluiceDnsKey {
	return bpf.SluiceDnsKey{Addr: peer.Addr().As16(), Port: peer.Port(), Id: id}
}

// takeOriginWait reads and deletes the sluice_peers entry of peer,
// waiting up to wait for it to appear.
func (a *Agent) takeOriginWait(peer netip.AddrPort, wait time.Duration) (bpf.SluiceOrigin, error) {
	k := peerKey(peer)
	return waitOrigin(peer, asBytes(&k), wait, a.takeOrigin, nil)
}

// dnsTCPOrigins holds the origin of each open TCP connection to the DNS
// server. sockops keeps a connection's sluice_peers entry past the
// workload's close (the proxy may accept it later: sluice.c), so the DNS
// server takes the entry out of the kernel's map as it accepts the
// connection (or, if it is not there yet, at the first query) and keeps
// it here until the connection closes. Left in the map, by a connection
// that closed without a query, it would name whichever process next
// connects straight to the DNS port from the same {ip, port}.
type dnsTCPOrigins struct {
	mu sync.Mutex
	m  map[netip.AddrPort]*dnsTCPOrigin
}

// dnsTCPOrigin is one connection's origin, taken once.
type dnsTCPOrigin struct {
	once sync.Once
	o    bpf.SluiceOrigin
	err  error
}

func (s *dnsTCPOrigins) add(peer netip.AddrPort, o *dnsTCPOrigin) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = make(map[netip.AddrPort]*dnsTCPOrigin)
	}
	s.m[peer] = o
}

func (s *dnsTCPOrigins) remove(peer netip.AddrPort, o *dnsTCPOrigin) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m[peer] == o {
		delete(s.m, peer)
	}
}

// origin is the origin of the open connection from peer, taken with take
// at its first query.
func (s *dnsTCPOrigins) origin(peer netip.AddrPort, take func() (bpf.SluiceOrigin, error)) (bpf.SluiceOrigin, error) {
	s.mu.Lock()
	o := s.m[peer]
	s.mu.Unlock()
	if o == nil {
		return bpf.SluiceOrigin{}, fmt.Errorf("look up dns origin of %s: %w", peer, errNoOrigin)
	}
	o.once.Do(func() { o.o, o.err = take() })
	return o.o, o.err
}

// dnsListener registers each accepted connection in set until it closes,
// with its origin when take (one look, no wait) finds it.
type dnsListener struct {
	net.Listener
	set  *dnsTCPOrigins
	take func(peer netip.AddrPort) (bpf.SluiceOrigin, error)
}

func (l dnsListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return c, err
	}
	ta, ok := c.RemoteAddr().(*net.TCPAddr)
	if !ok {
		return c, nil // never registered: its queries find no origin
	}
	ap := ta.AddrPort()
	dc := &dnsConn{Conn: c, set: l.set, peer: netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), o: &dnsTCPOrigin{}}
	if o, err := l.take(dc.peer); err == nil {
		dc.o.once.Do(func() { dc.o.o = o })
	}
	l.set.add(dc.peer, dc.o)
	return dc, nil
}

// dnsConn leaves its set when it closes.
type dnsConn struct {
	net.Conn
	set   *dnsTCPOrigins
	peer  netip.AddrPort
	o     *dnsTCPOrigin
	close sync.Once
}

func (c *dnsConn) Close() error {
	c.close.Do(func() { c.set.remove(c.peer, c.o) })
	return c.Conn.Close()
}
