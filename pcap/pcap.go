// Package pcap exports decrypted traffic as pcapng, so that Wireshark and
// tshark show what a workload sent inside its TLS connections as plain
// HTTP. The proxy sees byte streams, not packets, so for each flow this
// package synthesizes Ethernet, IPv4 or IPv6 and TCP packets around the
// plaintext: a three-way handshake, data segments at the MSS with
// increasing sequence and acknowledgement numbers and correct checksums,
// and a FIN exchange. It uses gopacket's pure-Go pcapng writer (no cgo,
// no libpcap).
//
// One Writer is one file holding many flows; a Dir writes one file per
// flow. Both are a Capture. Each flow gets its own
// pcapng interface named after the workload and destination (Wireshark's
// "Interface name" and "Interface description" columns, tshark's
// frame.interface_name), and the real destination port there: in the
// packets the server port is always 80, so that `tshark -r FILE -Y http`
// dissects HTTP/1.1 with no options. HTTP/2 flows (ALPN h2) are written
// the same way, and tshark recognises them by the client preface on port
// 80: `tshark -r FILE -Y http2` shows their headers (Wireshark 4.0).
//
// A file is capped in size; past the cap the writer stops writing and
// counts what it dropped (Stats). The files hold plaintext secrets
// (Authorization headers, API keys): Create makes them 0600.
package pcap

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"
)

// HTTPPort is the server port written in every synthesized packet.
const HTTPPort = 80

// Options tune a Writer. Zero values take the defaults.
type Options struct {
	// MaxBytes caps the file (default 100 MiB). Packets that would pass
	// it are dropped and counted; later flows are not recorded.
	MaxBytes int64
	// Now stamps packets (tests); nil is time.Now.
	Now func() time.Time
}

// DefaultMaxBytes is the default file cap.
const DefaultMaxBytes = 100 << 20

// Stats are a Writer's counters.
type Stats struct {
	Flows          uint64 // flows started (recorded or not)
	Packets        uint64 // packets written
	Bytes          int64  // bytes written to the file, headers included
	DroppedPackets uint64 // packets not written because of the cap or an error
	DroppedBytes   uint64 // plaintext bytes in those packets
}

// Writer writes one pcapng file. It is safe for concurrent use by many
// flows. A nil *Writer is valid: NewFlow returns a nil *Flow, whose
// methods do nothing, so callers need no "is capture on" checks.
type Writer struct {
	o Options

	mu     sync.Mutex
	ng     *pcapgo.NgWriter
	cw     *countWriter
	closer io.Closer
	closed bool
	err    error
	st     Stats
	// size is the file's length once everything buffered is flushed.
	size   int64
	nextIf int
	nextPt uint16
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// NewWriter starts a pcapng section on w. The caller keeps ownership of w;
// Close flushes but does not close it.
func NewWriter(w io.Writer, o Options) (*Writer, error) {
	if o.MaxBytes == 0 {
		o.MaxBytes = DefaultMaxBytes
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	cw := &countWriter{w: w}
	ng, err := pcapgo.NewNgWriterInterface(cw, pcapgo.NgInterface{
		Name:        "sluice",
		Description: "decrypted traffic exported by Sluice; one interface per flow",
		LinkType:    layers.LinkTypeEthernet,
	}, pcapgo.NgWriterOptions{SectionInfo: pcapgo.NgSectionInfo{Application: "sluice"}})
	if err != nil {
		return nil, fmt.Errorf("start pcapng: %w", err)
	}
	if err := ng.Flush(); err != nil {
		return nil, fmt.Errorf("start pcapng: %w", err)
	}
	// Interface 0 above is the file's own; flows start at 1.
	return &Writer{o: o, ng: ng, cw: cw, size: cw.n, nextIf: 1, nextPt: 40000}, nil
}

// Create makes path (mode 0600, truncating) and writes to it; Close closes
// the file.
func Create(path string, o Options) (*Writer, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("create pcap %s: %w", path, err)
	}
	w, err := NewWriter(f, o)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("create pcap %s: %w", path, err)
	}
	w.closer = f
	return w, nil
}

// Stats returns the counters so far.
func (w *Writer) Stats() Stats {
	if w == nil {
		return Stats{}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	s := w.st
	s.Bytes = w.size
	return s
}

// Err is the first write error, if any; after it the writer drops
// everything.
func (w *Writer) Err() error {
	if w == nil {
		return nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// Flush writes buffered packets out.
func (w *Writer) Flush() error {
	if w == nil {
		return nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return nil
	}
	return w.ng.Flush()
}

// Close flushes and, for a Writer from Create, closes the file. Flows
// still open afterwards write nothing. Close is idempotent.
func (w *Writer) Close() error {
	if w == nil {
		return nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return nil
	}
	w.closed = true
	err := w.ng.Flush()
	if w.closer != nil {
		err = errors.Join(err, w.closer.Close())
	}
	if err != nil {
		return fmt.Errorf("close pcap: %w", err)
	}
	return nil
}

// FlowMeta describes a flow.
type FlowMeta struct {
	// Client is the workload's address; an invalid value becomes
	// 192.0.2.1 and a zero port an ephemeral one.
	Client netip.AddrPort
	// Server is the destination; its port is kept in the interface
	// description, and HTTPPort is written in the packets. An invalid
	// address becomes 192.0.2.2 (or 2001:db8::2 for an IPv6 client).
	Server netip.AddrPort
	// Workload and Host name the flow.
	Workload string
	Host     string
	// Redact, when set, rewrites the flow's bytes before they are
	// written (secrets out of the capture); nil writes them as they are.
	Redact Redactor
}

// Redactor rewrites a flow's bytes on their way into the capture. It may
// hold bytes back (a secret cut between two writes); what it returns is
// written, in order. Calls for a flow are serialized.
type Redactor interface {
	// Redact takes p (not retained) and returns the bytes to write now.
	Redact(fromClient bool, p []byte) []byte
	// Flush returns what is held back, at the flow's end.
	Flush(fromClient bool) []byte
}

// Flow is one synthesized TCP connection. Its methods are safe for
// concurrent use, and do nothing on a nil *Flow or after Close.
type Flow struct {
	w      *Writer
	ifIdx  int
	mss    int
	client endpoint
	server endpoint

	mu     sync.Mutex
	closed bool
	// seq is the next sequence number each side sends.
	cseq, sseq uint32
	// dead: the interface was never written (cap reached), drop all.
	dead bool
	// onClose runs once after the FIN exchange (Dir closes the flow's file).
	onClose func()
	redact  Redactor
}

type endpoint struct {
	mac  net.HardwareAddr
	ip   netip.Addr
	port uint16
}

var (
	clientMAC = net.HardwareAddr{0x02, 0x00, 0x5c, 0x1c, 0xe0, 0x01}
	serverMAC = net.HardwareAddr{0x02, 0x00, 0x5c, 0x1c, 0xe0, 0x02}
)

// NewFlow records a new flow: its interface block and a three-way
// handshake. The caller must Close it.
func (w *Writer) NewFlow(m FlowMeta) *Flow {
	if w == nil {
		return nil
	}
	cip, sip := m.Client.Addr().Unmap(), m.Server.Addr().Unmap()
	switch {
	case !cip.IsValid() && !sip.IsValid():
		cip, sip = netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")
	case !cip.IsValid():
		cip = placeholder(sip.Is6(), 1)
	case !sip.IsValid():
		sip = placeholder(cip.Is6(), 2)
	}
	if cip.Is4() != sip.Is4() {
		// One family per packet: carry IPv4 as IPv4-mapped IPv6.
		cip, sip = as6(cip), as6(sip)
	}
	f := &Flow{w: w, mss: 1460, redact: m.Redact}
	if cip.Is6() {
		f.mss = 1440
	}
	w.mu.Lock()
	w.st.Flows++
	cport := m.Client.Port()
	if cport == 0 {
		cport = w.nextPt
		w.nextPt++
		if w.nextPt < 40000 {
			w.nextPt = 40000
		}
	}
	f.client = endpoint{mac: clientMAC, ip: cip, port: cport}
	f.server = endpoint{mac: serverMAC, ip: sip, port: HTTPPort}
	// Initial sequence numbers: distinct per flow, fixed per file, so that
	// output is reproducible.
	f.cseq = 0x10000000 + uint32(w.nextIf)*0x1000
	f.sseq = 0x80000000 + uint32(w.nextIf)*0x1000
	name := fmt.Sprintf("%s -> %s", orDash(m.Workload), orDash(m.Host))
	desc := fmt.Sprintf("workload %s, host %s, client %s, server %s (written as port %d)",
		orDash(m.Workload), orDash(m.Host), m.Client, m.Server, HTTPPort)
	if w.usable() && w.size+idbSize(name, desc) <= w.o.MaxBytes {
		id, err := w.ng.AddInterface(pcapgo.NgInterface{Name: name, Description: desc, LinkType: layers.LinkTypeEthernet})
		if err == nil {
			// Learn the block's size: flush, then read the count.
			err = w.ng.Flush()
			w.size = w.cw.n
		}
		if err != nil {
			w.fail(err)
			f.dead = true
		} else {
			f.ifIdx = id
			w.nextIf++
		}
	} else {
		f.dead = true
	}
	w.mu.Unlock()

	f.mu.Lock()
	defer f.mu.Unlock()
	f.send(true, layers.TCP{SYN: true}, nil)
	f.cseq++
	f.send(false, layers.TCP{SYN: true, ACK: true}, nil)
	f.sseq++
	f.send(true, layers.TCP{ACK: true}, nil)
	return f
}

// idbSize is the length of the interface description block AddInterface
// writes for a flow: header, name, description, timestamp resolution,
// end of options, trailer.
func idbSize(name, desc string) int64 {
	opt := func(n int) int64 { return int64(4 + (n+3)&^3) }
	return 16 + opt(len(name)) + opt(len(desc)) + opt(1) + 4 + 4
}

func placeholder(v6 bool, last byte) netip.Addr {
	if v6 {
		return netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: last})
	}
	return netip.AddrFrom4([4]byte{192, 0, 2, last})
}

func as6(a netip.Addr) netip.Addr {
	if a.Is4() {
		return netip.AddrFrom16(a.As16())
	}
	return a
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// usable reports whether the writer may still write (w.mu held).
func (w *Writer) usable() bool {
	return !w.closed && w.err == nil && w.size < w.o.MaxBytes
}

func (w *Writer) fail(err error) {
	if w.err == nil {
		w.err = fmt.Errorf("write pcap: %w", err)
	}
}

// ClientToServer records p as sent by the client. p is not retained.
func (f *Flow) ClientToServer(p []byte) { f.data(true, p) }

// ServerToClient records p as sent by the server. p is not retained.
func (f *Flow) ServerToClient(p []byte) { f.data(false, p) }

func (f *Flow) data(fromClient bool, p []byte) {
	if f == nil || len(p) == 0 {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return
	}
	if f.redact != nil {
		p = f.redact.Redact(fromClient, p)
	}
	f.segments(fromClient, p)
}

// segments writes p as packets of at most one MSS (f.mu held).
func (f *Flow) segments(fromClient bool, p []byte) {
	for len(p) > 0 {
		n := min(len(p), f.mss)
		f.send(fromClient, layers.TCP{ACK: true, PSH: n == len(p)}, p[:n])
		if fromClient {
			f.cseq += uint32(n)
		} else {
			f.sseq += uint32(n)
		}
		p = p[n:]
	}
}

// Close records the FIN exchange. It is idempotent.
func (f *Flow) Close() {
	if f == nil {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return
	}
	if f.redact != nil {
		f.segments(true, f.redact.Flush(true))
		f.segments(false, f.redact.Flush(false))
	}
	f.send(true, layers.TCP{FIN: true, ACK: true}, nil)
	f.cseq++
	f.send(false, layers.TCP{FIN: true, ACK: true}, nil)
	f.sseq++
	f.send(true, layers.TCP{ACK: true}, nil)
	f.closed = true
	if f.onClose != nil {
		f.onClose()
	}
}

// send builds one packet with the flow's current sequence numbers (f.mu
// held) and writes it.
func (f *Flow) send(fromClient bool, tcp layers.TCP, payload []byte) {
	src, dst := f.client, f.server
	tcp.Seq, tcp.Ack = f.cseq, f.sseq
	if !fromClient {
		src, dst = dst, src
		tcp.Seq, tcp.Ack = f.sseq, f.cseq
	}
	if !tcp.ACK {
		tcp.Ack = 0
	}
	tcp.SrcPort, tcp.DstPort = layers.TCPPort(src.port), layers.TCPPort(dst.port)
	tcp.Window = 65535
	if tcp.SYN {
		mss := make([]byte, 2)
		binary.BigEndian.PutUint16(mss, uint16(f.mss))
		tcp.Options = []layers.TCPOption{{OptionType: layers.TCPOptionKindMSS, OptionLength: 4, OptionData: mss}}
	}
	eth := &layers.Ethernet{SrcMAC: src.mac, DstMAC: dst.mac}
	var ip gopacket.SerializableLayer
	if src.ip.Is4() {
		eth.EthernetType = layers.EthernetTypeIPv4
		v4 := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolTCP, Flags: layers.IPv4DontFragment,
			SrcIP: src.ip.AsSlice(), DstIP: dst.ip.AsSlice()}
		_ = tcp.SetNetworkLayerForChecksum(v4)
		ip = v4
	} else {
		eth.EthernetType = layers.EthernetTypeIPv6
		v6 := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolTCP,
			SrcIP: src.ip.AsSlice(), DstIP: dst.ip.AsSlice()}
		_ = tcp.SetNetworkLayerForChecksum(v6)
		ip = v6
	}
	buf := gopacket.NewSerializeBuffer()
	err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		eth, ip, &tcp, gopacket.Payload(payload))
	f.w.write(f, buf.Bytes(), len(payload), err)
}

func (w *Writer) write(f *Flow, pkt []byte, payload int, serr error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if serr != nil {
		w.fail(serr)
	}
	block := int64(32 + (len(pkt)+3)&^3) // enhanced packet block
	if f.dead || !w.usable() || w.size+block > w.o.MaxBytes {
		w.st.DroppedPackets++
		w.st.DroppedBytes += uint64(payload)
		return
	}
	ci := gopacket.CaptureInfo{Timestamp: w.o.Now(), CaptureLength: len(pkt), Length: len(pkt), InterfaceIndex: f.ifIdx}
	if err := w.ng.WritePacket(ci, pkt); err != nil {
		w.fail(err)
		w.st.DroppedPackets++
		w.st.DroppedBytes += uint64(payload)
		return
	}
	w.st.Packets++
	w.size += block
}
