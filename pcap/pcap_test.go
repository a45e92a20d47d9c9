package pcap_test

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/sluicehq/sluice/pcap"
)

const (
	request  = "POST /v1/messages HTTP/1.1\r\nHost: api.example.com\r\nContent-Type: application/json\r\nContent-Length: 17\r\n\r\n{\"model\":\"tiny\"}\n"
	bodySize = 5000 // > 3 segments: the response must be reassembled
)

func response() string {
	return fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s", bodySize, strings.Repeat("x", bodySize))
}

func fixedClock() func() time.Time {
	var mu sync.Mutex
	t := time.Date(2026, 11, 25, 9, 0, 0, 0, time.UTC)
	return func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		t = t.Add(time.Millisecond)
		return t
	}
}

type packet struct {
	iface   int
	eth     *layers.Ethernet
	tcp     *layers.TCP
	src     netip.Addr
	dst     netip.Addr
	raw     []byte
	payload []byte
}

func readAll(t *testing.T, b []byte) (*pcapgo.NgReader, []packet) {
	t.Helper()
	r, err := pcapgo.NewNgReader(bytes.NewReader(b), pcapgo.DefaultNgReaderOptions)
	if err != nil {
		t.Fatalf("read pcapng: %v", err)
	}
	var out []packet
	for i := 0; i < 100000; i++ {
		data, ci, err := r.ReadPacketData()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("packet %d: %v", i, err)
		}
		p := gopacket.NewPacket(data, layers.LayerTypeEthernet, gopacket.Default)
		if el := p.ErrorLayer(); el != nil {
			t.Fatalf("packet %d does not decode: %v", i, el.Error())
		}
		pk := packet{iface: ci.InterfaceIndex, raw: data}
		pk.eth = p.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
		pk.tcp = p.Layer(layers.LayerTypeTCP).(*layers.TCP)
		if v4, ok := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4); ok {
			pk.src, _ = netip.AddrFromSlice(v4.SrcIP)
			pk.dst, _ = netip.AddrFromSlice(v4.DstIP)
			pk.src, pk.dst = pk.src.Unmap(), pk.dst.Unmap()
		} else if v6, ok := p.Layer(layers.LayerTypeIPv6).(*layers.IPv6); ok {
			pk.src, _ = netip.AddrFromSlice(v6.SrcIP)
			pk.dst, _ = netip.AddrFromSlice(v6.DstIP)
		}
		pk.payload = pk.tcp.Payload
		out = append(out, pk)
	}
	return r, out
}

func flags(t *layers.TCP) string {
	var f []string
	for _, x := range []struct {
		on bool
		n  string
	}{{t.SYN, "S"}, {t.FIN, "F"}, {t.PSH, "P"}, {t.ACK, "A"}} {
		if x.on {
			f = append(f, x.n)
		}
	}
	return strings.Join(f, "")
}

// TestTCPStream checks what a TCP stack would: handshake, sequence numbers
// that cover every payload byte exactly once, acks, MSS, FIN exchange.
func TestTCPStream(t *testing.T) {
	var buf bytes.Buffer
	w, err := pcap.NewWriter(&buf, pcap.Options{Now: fixedClock()})
	if err != nil {
		t.Fatal(err)
	}
	client := netip.MustParseAddrPort("10.1.2.3:51000")
	server := netip.MustParseAddrPort("93.184.215.14:443")
	f := w.NewFlow(pcap.FlowMeta{Client: client, Server: server, Workload: "ai/agent-0", Host: "api.example.com"})
	f.ClientToServer([]byte(request))
	f.ServerToClient([]byte(response()))
	f.Close()
	f.Close() // idempotent
	f.ClientToServer([]byte("after close"))
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}

	r, pkts := readAll(t, buf.Bytes())
	var fl []string
	for _, p := range pkts {
		fl = append(fl, flags(p.tcp))
	}
	// S, SA, A; request (one segment); response in 4 segments, PSH on the
	// last; FA, FA, A.
	want := "S SA A PA A A A PA FA FA A"
	if got := strings.Join(fl, " "); got != want {
		t.Fatalf("flags %q, want %q", got, want)
	}
	streams := map[bool][]byte{}
	var nextSeq = map[bool]uint32{}
	for i, p := range pkts {
		fromClient := p.src == client.Addr()
		if fromClient && (p.dst != server.Addr() || p.tcp.SrcPort != 51000 || p.tcp.DstPort != pcap.HTTPPort) {
			t.Errorf("packet %d: %v:%d -> %v:%d", i, p.src, p.tcp.SrcPort, p.dst, p.tcp.DstPort)
		}
		if p.iface != 1 {
			t.Errorf("packet %d on interface %d, want the flow's (1)", i, p.iface)
		}
		if len(p.payload) > 1460 {
			t.Errorf("packet %d payload %d > MSS", i, len(p.payload))
		}
		if p.tcp.SYN {
			nextSeq[fromClient] = p.tcp.Seq + 1
			continue
		}
		if p.tcp.Seq != nextSeq[fromClient] {
			t.Errorf("packet %d (%s) seq %d, want %d", i, flags(p.tcp), p.tcp.Seq, nextSeq[fromClient])
		}
		if p.tcp.Ack != nextSeq[!fromClient] {
			t.Errorf("packet %d (%s) ack %d, want %d", i, flags(p.tcp), p.tcp.Ack, nextSeq[!fromClient])
		}
		nextSeq[fromClient] += uint32(len(p.payload))
		if p.tcp.FIN {
			nextSeq[fromClient]++
		}
		streams[fromClient] = append(streams[fromClient], p.payload...)
	}
	if string(streams[true]) != request {
		t.Errorf("client stream %q", streams[true])
	}
	if string(streams[false]) != response() {
		t.Errorf("server stream differs (%d bytes)", len(streams[false]))
	}

	// Checksums: re-serializing each packet with computed checksums must
	// give the same bytes.
	for i, p := range pkts {
		gp := gopacket.NewPacket(p.raw, layers.LayerTypeEthernet, gopacket.Default)
		ls := []gopacket.SerializableLayer{}
		for _, l := range gp.Layers() {
			switch l := l.(type) {
			case *layers.IPv4:
				_ = gp.Layer(layers.LayerTypeTCP).(*layers.TCP).SetNetworkLayerForChecksum(l)
				ls = append(ls, l)
			case gopacket.SerializableLayer:
				ls = append(ls, l)
			}
		}
		out := gopacket.NewSerializeBuffer()
		if err := gopacket.SerializeLayers(out, gopacket.SerializeOptions{ComputeChecksums: true, FixLengths: true}, ls...); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(out.Bytes(), p.raw) {
			t.Errorf("packet %d: checksums or lengths differ from a fresh serialization", i)
		}
	}

	intf, err := r.Interface(1)
	if err != nil {
		t.Fatal(err)
	}
	if intf.Name != "ai/agent-0 -> api.example.com" || !strings.Contains(intf.Description, "server 93.184.215.14:443") {
		t.Errorf("interface %q %q: want the workload, host and real server", intf.Name, intf.Description)
	}
}

func TestCapAndStats(t *testing.T) {
	var buf bytes.Buffer
	w, err := pcap.NewWriter(&buf, pcap.Options{MaxBytes: 4096, Now: fixedClock()})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		f := w.NewFlow(pcap.FlowMeta{Client: netip.AddrPortFrom(netip.MustParseAddr("10.0.0.1"), uint16(50000+i)), Server: netip.MustParseAddrPort("10.0.0.2:443")})
		f.ClientToServer([]byte(request))
		f.ServerToClient(bytes.Repeat([]byte("y"), 3000))
		f.Close()
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	st := w.Stats()
	if buf.Len() > 4096 {
		t.Errorf("file %d bytes, over the 4096 cap", buf.Len())
	}
	if st.Bytes != int64(buf.Len()) {
		t.Errorf("Stats.Bytes %d, file %d", st.Bytes, buf.Len())
	}
	if st.Flows != 5 || st.DroppedPackets == 0 || st.DroppedBytes == 0 || st.Packets == 0 {
		t.Errorf("stats %+v: want 5 flows, some written, some dropped", st)
	}
	_, pkts := readAll(t, buf.Bytes())
	if uint64(len(pkts)) != st.Packets {
		t.Errorf("file holds %d packets, stats say %d", len(pkts), st.Packets)
	}
	if w.Err() != nil {
		t.Errorf("Err = %v: the cap is not an error", w.Err())
	}
}

func TestNilIsOff(t *testing.T) {
	var w *pcap.Writer
	f := w.NewFlow(pcap.FlowMeta{})
	f.ClientToServer([]byte("x"))
	f.ServerToClient([]byte("x"))
	f.Close()
	a, b := net.Pipe()
	defer b.Close()
	if c := f.Conn(a); c != a {
		t.Error("nil flow wrapped the conn")
	}
	a.Close()
	if w.Close() != nil || w.Stats() != (pcap.Stats{}) {
		t.Error("nil writer misbehaves")
	}
}

func TestConnTapAndConcurrentFlows(t *testing.T) {
	var buf bytes.Buffer
	w, err := pcap.NewWriter(&buf, pcap.Options{})
	if err != nil {
		t.Fatal(err)
	}
	const n = 8
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			proxySide, clientSide := net.Pipe()
			f := w.NewFlow(pcap.FlowMeta{Client: netip.AddrPortFrom(netip.MustParseAddr("fd00::1"), uint16(41000+i)),
				Server: netip.MustParseAddrPort("[2001:db8::10]:443"), Workload: fmt.Sprintf("w%d", i), Host: "v6.example"})
			conn := f.Conn(proxySide)
			go func() {
				defer clientSide.Close()
				fmt.Fprintf(clientSide, "GET /%d HTTP/1.1\r\nHost: v6.example\r\n\r\n", i)
				_, _ = io.Copy(io.Discard, clientSide)
			}()
			b := make([]byte, 4096)
			k, _ := conn.Read(b)
			if !strings.HasPrefix(string(b[:k]), "GET /") {
				t.Errorf("flow %d read %q", i, b[:k])
			}
			_, _ = conn.Write([]byte("HTTP/1.1 204 No Content\r\n\r\n"))
			conn.Close()
		}()
	}
	wg.Wait()
	w.Close()
	_, pkts := readAll(t, buf.Bytes())
	byIface := map[int][]string{}
	for _, p := range pkts {
		if !p.src.Is6() || p.src.Is4In6() {
			t.Fatalf("packet not IPv6: %v", p.src)
		}
		byIface[p.iface] = append(byIface[p.iface], flags(p.tcp))
	}
	if len(byIface) != n {
		t.Fatalf("interfaces used %d, want %d", len(byIface), n)
	}
	var seqs []string
	for _, f := range byIface {
		seqs = append(seqs, strings.Join(f, " "))
	}
	sort.Strings(seqs)
	for _, s := range seqs {
		if s != "S SA A PA PA FA FA A" {
			t.Errorf("flow packets %q", s)
		}
	}
}

// TestTshark has the real tshark read the file back and dissect HTTP.
func TestTshark(t *testing.T) {
	tshark, err := exec.LookPath("tshark")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("tshark not installed; .ci/run installs it")
		}
		t.Skip("tshark not installed")
	}
	path := filepath.Join(t.TempDir(), "flows.pcapng")
	w, err := pcap.Create(path, pcap.Options{})
	if err != nil {
		t.Fatal(err)
	}
	f := w.NewFlow(pcap.FlowMeta{Client: netip.MustParseAddrPort("10.1.2.3:51000"), Server: netip.MustParseAddrPort("93.184.215.14:443"),
		Workload: "ai/agent-0", Host: "api.example.com"})
	f.ClientToServer([]byte(request))
	f.ServerToClient([]byte(response()))
	f.Close()
	// An IPv6 flow in the same file, and a mixed-family one.
	f6 := w.NewFlow(pcap.FlowMeta{Client: netip.MustParseAddrPort("[fd00::1]:40000"), Server: netip.MustParseAddrPort("[2001:db8::10]:8443"), Workload: "w6", Host: "v6.example"})
	f6.ClientToServer([]byte("GET /six HTTP/1.1\r\nHost: v6.example\r\nUser-Agent: t\r\n\r\n"))
	f6.ServerToClient([]byte("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"))
	f6.Close()
	fm := w.NewFlow(pcap.FlowMeta{Client: netip.MustParseAddrPort("127.0.0.1:40001"), Server: netip.MustParseAddrPort("[2001:db8::11]:443"), Host: "mixed.example"})
	fm.ClientToServer([]byte("DELETE /x HTTP/1.1\r\nHost: mixed.example\r\n\r\n"))
	fm.ServerToClient([]byte("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"))
	fm.Close()
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("file mode %v %v, want 0600: it holds decrypted secrets", fi.Mode(), err)
	}

	run := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(tshark, append([]string{"-r", path}, args...)...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("tshark %v: %v\n%s", args, err, stderr.String())
		}
		return string(out)
	}
	got := run("-Y", "http", "-T", "fields", "-E", "separator=|", "-e", "http.request.method", "-e", "http.host", "-e", "http.request.uri", "-e", "http.response.code")
	lines := strings.Split(strings.TrimSpace(got), "\n")
	sort.Strings(lines)
	want := []string{
		"DELETE|mixed.example|/x|",
		"GET|v6.example|/six|",
		"POST|api.example.com|/v1/messages|",
		"|||200",
		"|||404",
		"|||503",
	}
	sort.Strings(want)
	if strings.Join(lines, "\n") != strings.Join(want, "\n") {
		t.Errorf("tshark http fields:\n%s\nwant:\n%s", strings.Join(lines, "\n"), strings.Join(want, "\n"))
	}
	// The 5000-byte body was reassembled from its segments.
	if got := strings.TrimSpace(run("-Y", "http.response.code == 200", "-T", "fields", "-e", "http.content_length", "-e", "http.file_data")); !strings.HasPrefix(got, "5000\t") {
		t.Errorf("200 response: %.80q, want content length 5000 with its body", got)
	}
	// No TCP problems (lost segments, bad acks, retransmissions) and every
	// checksum verifies.
	if bad := strings.TrimSpace(run("-o", "tcp.check_checksum:TRUE", "-o", "ip.check_checksum:TRUE",
		"-Y", "tcp.analysis.flags || tcp.checksum.status != 1 || (ip && ip.checksum.status != 1)")); bad != "" {
		t.Errorf("tshark reports TCP problems or bad checksums:\n%s", bad)
	}
	// Each flow is named after its workload and host.
	names := run("-T", "fields", "-e", "frame.interface_name")
	for _, n := range []string{"ai/agent-0 -> api.example.com", "w6 -> v6.example", "- -> mixed.example"} {
		if !strings.Contains(names, n) {
			t.Errorf("no packets on interface %q:\n%s", n, names)
		}
	}
}

func BenchmarkFlow(b *testing.B) {
	w, _ := pcap.NewWriter(io.Discard, pcap.Options{MaxBytes: 1 << 62})
	body := bytes.Repeat([]byte("z"), 16<<10)
	b.SetBytes(int64(len(body)))
	f := w.NewFlow(pcap.FlowMeta{})
	for b.Loop() {
		f.ServerToClient(body)
	}
}

// TestTsharkHTTP2: a decrypted h2 flow (client preface, SETTINGS, HPACK
// headers, DATA) is dissected as HTTP/2 with no decode-as option.
func TestTsharkHTTP2(t *testing.T) {
	tshark, err := exec.LookPath("tshark")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("tshark not installed; .ci/run installs it")
		}
		t.Skip("tshark not installed")
	}
	path := filepath.Join(t.TempDir(), "h2.pcapng")
	w, err := pcap.Create(path, pcap.Options{})
	if err != nil {
		t.Fatal(err)
	}
	f := w.NewFlow(pcap.FlowMeta{Client: netip.MustParseAddrPort("10.0.0.1:5000"), Server: netip.MustParseAddrPort("10.0.0.2:443"), Workload: "w", Host: "h2.example"})
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	header := func(kv ...string) []byte {
		hb.Reset()
		for i := 0; i < len(kv); i += 2 {
			if err := enc.WriteField(hpack.HeaderField{Name: kv[i], Value: kv[i+1]}); err != nil {
				t.Fatal(err)
			}
		}
		return bytes.Clone(hb.Bytes())
	}
	var cb bytes.Buffer
	cb.WriteString(http2.ClientPreface)
	cf := http2.NewFramer(&cb, nil)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(cf.WriteSettings())
	must(cf.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, EndStream: true, EndHeaders: true,
		BlockFragment: header(":method", "GET", ":scheme", "https", ":authority", "h2.example", ":path", "/two")}))
	f.ClientToServer(cb.Bytes())
	var sb bytes.Buffer
	sf := http2.NewFramer(&sb, nil)
	must(sf.WriteSettings())
	must(sf.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, EndHeaders: true, BlockFragment: header(":status", "200")}))
	must(sf.WriteData(1, true, []byte("hi")))
	f.ServerToClient(sb.Bytes())
	f.Close()
	must(w.Close())

	out, err := exec.Command(tshark, "-r", path, "-Y", "http2.type == 1", "-T", "fields", "-E", "separator=|",
		"-e", "http2.headers.method", "-e", "http2.headers.authority", "-e", "http2.headers.path", "-e", "http2.headers.status").Output()
	if err != nil {
		t.Fatalf("tshark: %v", err)
	}
	if got, want := strings.TrimSpace(string(out)), "GET|h2.example|/two|\n|||200"; got != want {
		t.Errorf("tshark http2 fields:\n%s\nwant:\n%s", got, want)
	}
}

// TestConnKeepsTLSState: wrapping a *tls.Conn keeps ConnectionState, so
// the proxy's HTTP servers still see ALPN and the SNI.
func TestConnKeepsTLSState(t *testing.T) {
	w, _ := pcap.NewWriter(io.Discard, pcap.Options{})
	f := w.NewFlow(pcap.FlowMeta{})
	a, b := net.Pipe()
	defer b.Close()
	wrapped := f.Conn(tls.Server(a, &tls.Config{}))
	if _, ok := wrapped.(interface{ ConnectionState() tls.ConnectionState }); !ok {
		t.Error("wrapped *tls.Conn lost ConnectionState")
	}
	plain := f.Conn(a)
	if _, ok := plain.(interface{ ConnectionState() tls.ConnectionState }); ok {
		t.Error("wrapped plain conn claims a TLS state")
	}
	if err := plain.Close(); err != nil {
		t.Error(err)
	}
	// Close closed the flow: its FIN exchange is the last thing written.
	st := w.Stats()
	f.ClientToServer([]byte("late"))
	if w.Stats() != st {
		t.Error("flow still writes after its conn was closed")
	}
}

// tapListener wraps every accepted (TLS) connection in a capture flow, the
// way the proxy wraps its decrypted client connection.
type tapListener struct {
	net.Listener
	w      *pcap.Writer
	closed chan struct{} // one send per connection closed (and its flow)
}

type notifyConn struct {
	net.Conn
	once   sync.Once
	closed chan struct{}
}

func (c *notifyConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.closed <- struct{}{} })
	return err
}

func (l tapListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	f := l.w.NewFlow(pcap.FlowMeta{
		Client:   netip.MustParseAddrPort(c.RemoteAddr().String()),
		Server:   netip.MustParseAddrPort(c.LocalAddr().String()),
		Workload: "test-client", Host: "api.test",
	})
	return &notifyConn{Conn: f.Conn(c), closed: l.closed}, nil
}

// TestTsharkDecryptedHTTPS: a real HTTPS exchange over loopback, captured
// after TLS termination, reads back in tshark as plain HTTP.
func TestTsharkDecryptedHTTPS(t *testing.T) {
	tshark, err := exec.LookPath("tshark")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("tshark not installed; .ci/run installs it")
		}
		t.Skip("tshark not installed")
	}
	path := filepath.Join(t.TempDir(), "https.pcapng")
	w, err := pcap.Create(path, pcap.Options{})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		rw.Header().Set("Content-Type", "application/json")
		rw.WriteHeader(http.StatusCreated)
		io.WriteString(rw, `{"id":"msg_1"}`)
	}))
	srv.EnableHTTP2 = false
	// Started only for its TLS configuration (a loopback certificate);
	// the server below terminates TLS and then taps the plaintext.
	srv.StartTLS()
	srv.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: srv.Config.Handler, TLSConfig: srv.TLS.Clone()}
	tlsLn := tls.NewListener(ln, hs.TLSConfig)
	closed := make(chan struct{}, 1)
	go hs.Serve(tapListener{Listener: tlsLn, w: w, closed: closed})
	defer hs.Close()

	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig:   &tls.Config{InsecureSkipVerify: true}, // the test server's own certificate; not what is tested
		DisableKeepAlives: true,
	}}
	resp, err := client.Post("https://"+ln.Addr().String()+"/v1/messages", "application/json", strings.NewReader(`{"model":"tiny"}`))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 201 || string(body) != `{"id":"msg_1"}` {
		t.Fatalf("response %d %q", resp.StatusCode, body)
	}
	// The server closes the connection after its response (no
	// keep-alive); the tap has recorded everything once it has.
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("server did not close the connection")
	}
	hs.Close()
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(tshark, "-r", path, "-Y", "http", "-T", "fields", "-E", "separator=|",
		"-e", "http.request.method", "-e", "http.request.uri", "-e", "http.host", "-e", "http.response.code", "-e", "http.file_data").Output()
	if err != nil {
		t.Fatalf("tshark: %v", err)
	}
	want := "POST|/v1/messages|" + ln.Addr().String() + "||{\"model\":\"tiny\"}\n|||201|{\"id\":\"msg_1\"}"
	if got := strings.TrimSpace(string(out)); got != want {
		t.Errorf("tshark:\n%s\nwant:\n%s", got, want)
	}
}
