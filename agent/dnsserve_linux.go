package agent

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/miekg/dns"
	"golang.org/x/sys/unix"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/bpf"
	"github.com/sluicehq/sluice/workload"
)

// A DNS query's origin is in the kernel's maps before the DNS server can
// read the query (egress writes a UDP query's as the datagram leaves;
// sockops a TCP connection's before its handshake ends), so the DNS
// server looks once and never waits: a wait would only give a process
// racing the workload's datagram, from the same {ip, port} with the same
// id, the time to take the workload's origin.

// listenDNS serves Options.DNS on agent.dnsPort, UDP and TCP, on every
// intercept address. The sockets carry the agent's mark.
func (a *Agent) listenDNS() error {
	lc := net.ListenConfig{Control: MarkControl(a.cfg.Mark)}
	h := dns.HandlerFunc(a.serveDNS)
	a.dnsUDP.take = func(kb, ob []byte) error { return a.take(a.objs.SluiceDnsPeers, kb, ob) }
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
		ln = dnsListener{Listener: ln, set: &a.dnsTCP, take: a.takeTCPOrigin}
		udpSrv := &dns.Server{PacketConn: pc, Handler: h, DecorateWriter: a.decorateDNSWriter}
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

// decorateDNSWriter wraps the writer of each UDP query in a
// dnsRejectWriter that drops the query's origin from sluice_dns_peers.
func (a *Agent) decorateDNSWriter(w dns.Writer) dns.Writer {
	rw, ok := w.(dns.ResponseWriter)
	if !ok {
		return w
	}
	return dnsRejectWriter{Writer: w, rw: rw, drop: func(peer netip.AddrPort, id uint16) {
		k := dnsKey(peer, id)
		var v bpf.SluiceDnsOrigin
		_ = a.take(a.objs.SluiceDnsPeers, asBytes(&k), asBytes(&v))
	}}
}

// dnsRejectWriter writes a UDP reply and, when it is FORMERR or NOTIMP,
// drops the origin of the query it answers (drop, by sender and message
// id). The DNS library answers so, without calling serveDNS, a datagram
// whose header it rejects or whose body it can't parse; egress wrote an
// origin for it all the same, which would otherwise stay in the map for
// a later sender from the same {ip, port} with the same id to find. (A
// response, QR set, the library ignores; egress writes none for it.)
// serveDNS's own FORMERR and NOTIMP answers pass here too, after its
// take: their drop finds nothing, unless a retransmit of the query came
// in meanwhile, which is then refused and retransmitted again.
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
			o, err = a.dnsTCP.origin(peer, func() (bpf.SluiceOrigin, error) { return a.takeTCPOrigin(peer) })
		} else {
			o, err = a.dnsUDP.origin(peer, r.Id, monotonicNow())
		}
		if errors.Is(err, errDNSDuplicate) {
			// Another copy of a query just answered: its sender has
			// (or will have) that answer.
			return
		}
		if err == nil {
			_, got := a.describe(o, peer)
			id = &got
		} else {
			if held, ok := a.noOriginDNS.allow(time.Now()); ok {
				a.log.Warn("dns query without origin", audit.KeyPeer, peer.String(), audit.KeyError, err, audit.KeySuppressed, held)
			}
		}
	}
	if id != nil {
		w = a.bypassDNS(w, r)
	}
	a.opts.DNS.Answer(a.ctx, w, r, id)
}

// dnsKey is the sluice_dns_peers key of the UDP query id from peer, as
// egress (bpf/dns.h dns_peer) writes it: IPv4 as ::ffff:a.b.c.d, port and
// id in host order.
func dnsKey(peer netip.AddrPort, id uint16) bpf.SluiceDnsKey {
	return bpf.SluiceDnsKey{Addr: peer.Addr().As16(), Port: peer.Port(), Id: id}
}

// takeTCPOrigin reads and deletes the sluice_peers entry of peer.
func (a *Agent) takeTCPOrigin(peer netip.AddrPort) (bpf.SluiceOrigin, error) {
	k := peerKey(peer)
	return waitOrigin(peer, asBytes(&k), 0, a.takeOrigin, nil)
}

// dnsOriginMaxAge is the oldest UDP query origin the DNS server takes: a
// query waits in its socket for far less. An older entry is one whose
// datagram was never read (dropped: the socket's buffer was full), and
// must not name whoever sends from that {ip, port} with that id later.
const dnsOriginMaxAge = 2 * time.Second

// dnsRecentTTL is how long the DNS server remembers a UDP query it took
// the origin of, to tell another copy of it (one socket sending one id to
// two resolvers at once, as musl does) from a query nobody sent.
const dnsRecentTTL = 2 * time.Second

// dnsRecentMax bounds the queries remembered per dnsRecentTTL.
const dnsRecentMax = 1 << 16

var (
	errDNSDuplicate = errors.New("another copy of a query already answered")
	errDNSStale     = fmt.Errorf("%w: the recorded origin is older than %v", errNoOrigin, dnsOriginMaxAge)
)

// dnsUDPOrigins hands the DNS server the origin of each UDP query, taken
// from sluice_dns_peers (take: lookup and delete), and remembers for
// dnsRecentTTL which queries it took.
type dnsUDPOrigins struct {
	take func(kb, ob []byte) error

	mu        sync.Mutex
	cur, prev map[bpf.SluiceDnsKey]struct{}
	rotated   time.Duration // monotonic time cur was started
}

// origin is the origin of query id from peer at monotonic time now:
// errNoOrigin (errDNSStale) when egress wrote none (or one too old),
// errDNSDuplicate when another copy of the query took it just before.
func (s *dnsUDPOrigins) origin(peer netip.AddrPort, id uint16, now time.Duration) (bpf.SluiceOrigin, error) {
	k := dnsKey(peer, id)
	var v bpf.SluiceDnsOrigin
	err := s.take(asBytes(&k), asBytes(&v))
	switch {
	case errors.Is(err, ebpf.ErrKeyNotExist):
		if s.seen(k, now) {
			return bpf.SluiceOrigin{}, errDNSDuplicate
		}
		return bpf.SluiceOrigin{}, fmt.Errorf("look up dns origin of %s id %d: %w", peer, id, errNoOrigin)
	case err != nil:
		return bpf.SluiceOrigin{}, fmt.Errorf("look up dns origin of %s id %d: %w", peer, id, err)
	case now-time.Duration(v.At) > dnsOriginMaxAge:
		return bpf.SluiceOrigin{}, fmt.Errorf("look up dns origin of %s id %d: %w", peer, id, errDNSStale)
	}
	s.remember(k, now)
	return v.O, nil
}

// remember notes query k as taken at now.
func (s *dnsUDPOrigins) remember(k bpf.SluiceDnsKey, now time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rotate(now)
	if s.cur == nil {
		s.cur = make(map[bpf.SluiceDnsKey]struct{})
	}
	s.cur[k] = struct{}{}
}

// seen reports whether query k was taken within the last dnsRecentTTL
// (at most twice that).
func (s *dnsUDPOrigins) seen(k bpf.SluiceDnsKey, now time.Duration) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rotate(now)
	_, a := s.cur[k]
	_, b := s.prev[k]
	return a || b
}

// rotate starts a new generation once the current one is dnsRecentTTL
// old or full; the one before is forgotten.
func (s *dnsUDPOrigins) rotate(now time.Duration) {
	age := now - s.rotated
	if age < dnsRecentTTL && len(s.cur) < dnsRecentMax {
		return
	}
	s.prev = s.cur // taken within dnsRecentTTL after s.rotated
	if age >= 2*dnsRecentTTL {
		s.prev = nil // all older than dnsRecentTTL
	}
	s.cur, s.rotated = nil, now
}

// monotonicNow is CLOCK_MONOTONIC, the clock of bpf_ktime_get_ns.
func monotonicNow() time.Duration {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return time.Duration(ts.Nano())
}

// dnsTCPOrigins holds the origin of each open TCP connection to the DNS
// server. sockops keeps a connection's sluice_peers entry past the
// workload's close (the proxy may accept it later: sluice.c), so the DNS
// server takes the entry out of the kernel's map as it accepts the
// connection (a connection accepted without one looks again at its first
// query) and keeps it here until the connection closes. Left in the map, by a connection
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
