package test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The attacker is this test binary re-executed with SLUICE_E2E_ATTACK set
// to an attack (JSON), started by the test as root inside the workload's
// cgroup and network namespace. It acts with raw system calls, prints an
// attackResult as JSON on the last line of stdout and exits before
// TestMain runs.
func init() {
	if a := os.Getenv("SLUICE_E2E_ATTACK"); a != "" {
		os.Exit(runAttack(a))
	}
}

// attack is what the attacker does.
type attack struct {
	// Op is "connect" (TCP connect to Dst, read until EOF) or "send"
	// (packets to Dst, see Kind).
	Op  string
	Dst netip.AddrPort
	// Mark, when set, is the SO_MARK the attacker gives its socket before
	// connecting; the setsockopt errno goes to MarkErrno.
	Mark uint32
	// Wait makes the attacker print "ready" once its socket exists (and is
	// marked) and wait for a line on stdin before it connects.
	Wait bool
	// Kind of packets for "send": "raw-udp" (SOCK_RAW IPPROTO_UDP, the
	// kernel writes the IP header), "raw-icmp" (an ICMP echo request, IPv4),
	// "raw-hdrincl" (IPPROTO_RAW, the attacker writes the whole IPv4
	// header) or "udp" (an unconnected SOCK_DGRAM sendto).
	Kind string
	// Payload is carried in every packet; Count packets are sent. For
	// "hold", Count connections are opened to Dst and held, idle, until
	// a line arrives on stdin.
	Payload string
	Count   int
}

// attackResult is what the attacker saw.
type attackResult struct {
	PID       int
	MarkErrno string // setsockopt(SO_MARK): "" when it succeeded
	Errno     string // connect or the last sendto: "" when it succeeded
	Data      string // what a connect read
	Sent      int    // sendto calls that succeeded
	Held      int    // "hold": connections that connected
}

func errnoName(err error) string {
	var en unix.Errno
	if errors.As(err, &en) {
		if n := unix.ErrnoName(en); n != "" {
			return n
		}
	}
	return err.Error()
}

func runAttack(spec string) int {
	var a attack
	if err := json.Unmarshal([]byte(spec), &a); err != nil {
		fmt.Fprintln(os.Stderr, "attack:", err)
		return 2
	}
	r := attackResult{PID: os.Getpid()}
	var err error
	switch a.Op {
	case "connect":
		err = attackConnect(a, &r)
	case "send":
		err = attackSend(a, &r)
	case "hold":
		err = attackHold(a, &r)
	default:
		err = fmt.Errorf("unknown op %q", a.Op)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "attack:", err)
		return 2
	}
	b, _ := json.Marshal(r)
	fmt.Printf("\n%s\n", b)
	return 0
}

func sockaddr(ap netip.AddrPort) (int, unix.Sockaddr) {
	if ap.Addr().Is4() {
		return unix.AF_INET, &unix.SockaddrInet4{Addr: ap.Addr().As4(), Port: int(ap.Port())}
	}
	return unix.AF_INET6, &unix.SockaddrInet6{Addr: ap.Addr().As16(), Port: int(ap.Port())}
}

func attackConnect(a attack, r *attackResult) error {
	fam, sa := sockaddr(a.Dst)
	fd, err := unix.Socket(fam, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	defer unix.Close(fd)
	if a.Mark != 0 {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, int(a.Mark)); err != nil {
			r.MarkErrno = errnoName(err)
		}
	}
	if a.Wait {
		fmt.Println("ready")
		if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
			return fmt.Errorf("wait for the go-ahead: %w", err)
		}
	}
	tv := unix.Timeval{Sec: 5}
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv)
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	if err := connect(fd, sa); err != nil {
		r.Errno = errnoName(err)
		return nil
	}
	buf := make([]byte, 4096)
	for {
		n, err := unix.Read(fd, buf)
		if n > 0 {
			r.Data += string(buf[:n])
		}
		if errors.Is(err, unix.EINTR) { // a signal, as in connect: nothing was read
			continue
		}
		if err != nil {
			r.Errno = errnoName(err)
			return nil
		}
		if n <= 0 {
			return nil
		}
	}
}

// connect is connect(2) on a blocking socket, waited for to its end. A
// signal can cut the wait short (Go's runtime sends its threads SIGURG
// to preempt them, and one sent just as the thread entered the call
// lands in it): connect returns EINTR and the kernel goes on connecting
// (connect(2), SO_SNDTIMEO set: not restarted). Then the socket's
// turning writable is waited for, up to 5 s, and the outcome read from
// SO_ERROR, as for a non-blocking connect.
func connect(fd int, sa unix.Sockaddr) error {
	err := unix.Connect(fd, sa)
	if !errors.Is(err, unix.EINTR) {
		return err
	}
	deadline := time.Now().Add(5 * time.Second)
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return unix.ETIMEDOUT
		}
		n, err := unix.Poll(pfd, int(left.Milliseconds())+1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("poll the connecting socket: %w", err)
		}
		if n > 0 {
			break
		}
	}
	v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
	if err != nil {
		return fmt.Errorf("read the connect's outcome: %w", err)
	}
	if v != 0 {
		return unix.Errno(v)
	}
	return nil
}

func attackSend(a attack, r *attackResult) error {
	fam, sa := sockaddr(a.Dst)
	payload := []byte(a.Payload)
	var typ, proto int
	var pkt []byte
	switch a.Kind {
	case "raw-udp":
		typ, proto = unix.SOCK_RAW, unix.IPPROTO_UDP
		pkt = udpHeader(a.Dst.Port(), payload)
	case "raw-icmp":
		typ, proto = unix.SOCK_RAW, unix.IPPROTO_ICMP
		pkt = append([]byte{8, 0, 0, 0, 0x51, 0xce, 0, 1}, payload...) // echo request
		binary.BigEndian.PutUint16(pkt[2:], inetChecksum(pkt))
	case "raw-hdrincl":
		typ, proto = unix.SOCK_RAW, unix.IPPROTO_RAW
		pkt = ipv4Header(a.Dst.Addr(), udpHeader(a.Dst.Port(), payload))
	case "udp":
		typ, proto = unix.SOCK_DGRAM, unix.IPPROTO_UDP
		pkt = payload
	default:
		return fmt.Errorf("unknown kind %q", a.Kind)
	}
	fd, err := unix.Socket(fam, typ|unix.SOCK_CLOEXEC, proto)
	if err != nil {
		return fmt.Errorf("socket %s: %w", a.Kind, err)
	}
	defer unix.Close(fd)
	if fam == unix.AF_INET6 && typ == unix.SOCK_RAW {
		// The kernel computes the UDP checksum at offset 6 (IPv6 needs one).
		_ = unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_CHECKSUM, 6)
	}
	if typ == unix.SOCK_RAW {
		// A raw socket's "port" is its protocol.
		switch s := sa.(type) {
		case *unix.SockaddrInet4:
			s.Port = 0
		case *unix.SockaddrInet6:
			s.Port = 0
		}
	}
	for i := 0; i < a.Count; i++ {
		if err := unix.Sendto(fd, pkt, 0, sa); err != nil {
			r.Errno = errnoName(err)
			continue
		}
		r.Sent++
	}
	return nil
}

// attackHold opens a.Count connections to a.Dst and holds them without a
// word, printing "ready" once they are open, until a line on stdin.
func attackHold(a attack, r *attackResult) error {
	n := uint64(a.Count) + 256
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: n, Max: n}); err != nil {
		return fmt.Errorf("raise RLIMIT_NOFILE to %d: %w", n, err)
	}
	fam, sa := sockaddr(a.Dst)
	var fds []int
	defer func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}()
	for i := 0; i < a.Count; i++ {
		fd, err := unix.Socket(fam, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("socket %d: %w", i, err)
		}
		fds = append(fds, fd)
		if err := connect(fd, sa); err != nil {
			r.Errno = errnoName(err)
			continue
		}
		r.Held++
	}
	fmt.Println("ready")
	if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
		return fmt.Errorf("wait for the go-ahead: %w", err)
	}
	return nil
}

// udpHeader prefixes payload with a UDP header (checksum 0: none over
// IPv4; the kernel fills it in over IPv6, see IPV6_CHECKSUM).
func udpHeader(dport uint16, payload []byte) []byte {
	h := make([]byte, 8, 8+len(payload))
	binary.BigEndian.PutUint16(h[0:], 40999)
	binary.BigEndian.PutUint16(h[2:], dport)
	binary.BigEndian.PutUint16(h[4:], uint16(8+len(payload)))
	return append(h, payload...)
}

// ipv4Header prefixes a UDP datagram with an IPv4 header the attacker
// wrote itself (the kernel fills in the source address, id and checksum).
func ipv4Header(dst netip.Addr, udp []byte) []byte {
	h := make([]byte, 20, 20+len(udp))
	h[0] = 0x45
	binary.BigEndian.PutUint16(h[2:], uint16(20+len(udp)))
	h[8] = 64
	h[9] = unix.IPPROTO_UDP
	d := dst.As4()
	copy(h[16:], d[:])
	return append(h, udp...)
}

func inetChecksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}

// attacker is a started attacker process.
type attacker struct {
	t      *testing.T
	cmd    *exec.Cmd
	cancel context.CancelFunc
	stdin  *os.File
	out    *bufio.Reader
	errb   strings.Builder
}

// startAttacker runs a as root inside host's network namespace and, when
// cg is not nil, inside cg from its first instruction (CLONE_INTO_CGROUP).
func startAttacker(t *testing.T, host *Host, cg *Cgroup, a attack) *attacker {
	t.Helper()
	spec, err := json.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	at := &attacker{t: t, cancel: cancel}
	at.cmd = host.Exec(ctx, self)
	at.cmd.Env = append(os.Environ(), "SLUICE_E2E_ATTACK="+string(spec))
	at.cmd.Stderr = &at.errb
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	at.cmd.Stdin, at.stdin = pr, pw
	stdout, err := at.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	at.out = bufio.NewReader(stdout)
	done := func() {}
	if cg != nil {
		done = cg.Command(t, at.cmd)
	}
	if err := at.cmd.Start(); err != nil {
		cancel()
		t.Fatalf("start attacker: %v", err)
	}
	done()
	pr.Close()
	t.Cleanup(func() {
		cancel()
		at.stdin.Close()
		_ = at.cmd.Wait()
	})
	return at
}

// ready waits for the attacker's "ready" line.
func (at *attacker) ready() {
	at.t.Helper()
	line, err := at.out.ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "ready" {
		at.t.Fatalf("attacker not ready: %q %v: %s", line, err, at.errb.String())
	}
}

// proceed lets a waiting attacker go on.
func (at *attacker) proceed() {
	at.t.Helper()
	if _, err := at.stdin.WriteString("go\n"); err != nil {
		at.t.Fatalf("signal attacker: %v", err)
	}
}

// result waits for the attacker to finish and returns what it saw.
func (at *attacker) result() attackResult {
	at.t.Helper()
	var last string
	for {
		line, err := at.out.ReadString('\n')
		if s := strings.TrimSpace(line); s != "" {
			last = s
		}
		if err != nil {
			break
		}
	}
	if err := at.cmd.Wait(); err != nil {
		at.t.Fatalf("attacker: %v: %s", err, at.errb.String())
	}
	var r attackResult
	if err := json.Unmarshal([]byte(last), &r); err != nil {
		at.t.Fatalf("attacker output %q: %v (stderr %s)", last, err, at.errb.String())
	}
	return r
}

func runAttacker(t *testing.T, host *Host, cg *Cgroup, a attack) attackResult {
	t.Helper()
	return startAttacker(t, host, cg, a).result()
}

// sniffer records every frame a test host's eth0 receives (AF_PACKET,
// ETH_P_ALL, inbound only): what reached the host, whatever the protocol
// or port and whether or not anything listens.
type sniffer struct {
	mu     sync.Mutex
	frames [][]byte
}

// sniff starts a sniffer in host's namespace; it stops in t.Cleanup.
func sniff(t *testing.T, host *Host) *sniffer {
	t.Helper()
	s := &sniffer{}
	var fd int
	err := host.Do(func() error {
		var err error
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			return fmt.Errorf("packet socket: %w", err)
		}
		ifi, err := netInterfaceIndex("eth0")
		if err != nil {
			return err
		}
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi})
	})
	if err != nil {
		t.Fatalf("sniff on %s: %v", host.Name, err)
	}
	tv := unix.Timeval{Usec: 100000}
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 65536)
		for {
			select {
			case <-stop:
				return
			default:
			}
			n, from, err := unix.Recvfrom(fd, buf, 0)
			if err != nil || n <= 0 {
				continue
			}
			if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
				continue
			}
			s.mu.Lock()
			s.frames = append(s.frames, bytes.Clone(buf[:n]))
			s.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		close(stop)
		<-done
		unix.Close(fd)
	})
	return s
}

// saw reports how many received frames contain b.
func (s *sniffer) saw(b []byte) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, f := range s.frames {
		if bytes.Contains(f, b) {
			n++
		}
	}
	return n
}

// sawFrom reports how many received IP packets have source address a.
func (s *sniffer) sawFrom(a netip.Addr) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, f := range s.frames {
		if len(f) < 14 {
			continue
		}
		switch binary.BigEndian.Uint16(f[12:]) {
		case unix.ETH_P_IP:
			if len(f) >= 14+20 && a.Is4() && netip.AddrFrom4([4]byte(f[26:30])) == a {
				n++
			}
		case unix.ETH_P_IPV6:
			if len(f) >= 14+40 && a.Is6() && netip.AddrFrom16([16]byte(f[22:38])) == a {
				n++
			}
		}
	}
	return n
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// netInterfaceIndex is the index of the named link in the current
// network namespace.
func netInterfaceIndex(name string) (int, error) {
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return 0, err
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFINDEX, ifr); err != nil {
		return 0, fmt.Errorf("index of %s: %w", name, err)
	}
	return int(ifr.Uint32()), nil
}
