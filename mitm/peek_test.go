package mitm

import (
	"bufio"
	"errors"
	"io"
	"net"
	"testing"
)

func TestPeekedConnReplaysPeekedBytes(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	msg := []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\nand the rest of the stream")
	go func() {
		for i := 0; i < len(msg); i += 3 { // small writes: peeks span reads
			a.Write(msg[i:min(i+3, len(msg))])
		}
		a.Close()
	}()
	pc := newPeekedConn(b, 64)
	got, err := pc.Peek(10)
	if err != nil || string(got) != string(msg[:10]) {
		t.Fatalf("peek %q %v", got, err)
	}
	if skip, ok := sniffHTTP(pc); !ok || skip != 0 {
		t.Fatalf("sniffHTTP = %d, %v; want 0, true", skip, ok)
	}
	if _, err := pc.Peek(65); !errors.Is(err, bufio.ErrBufferFull) {
		t.Fatalf("peek past max: %v", err)
	}
	all, err := io.ReadAll(pc)
	if err != nil || string(all) != string(msg) {
		t.Fatalf("read %q %v", all, err)
	}
}

// What counts as the start of an HTTP/1.x request. Anything that a server
// would parse as a request must be sniffed as HTTP, or it would be relayed
// past per-request policy; protocols that merely start with a word must not.
func TestSniffHTTP(t *testing.T) {
	tests := []struct {
		in   string
		skip int
		ok   bool
	}{
		{"GET / HTTP/1.1\r\n", 0, true},
		{"\r\nGET /admin HTTP/1.1\r\n", 2, true},
		{"\n\nPOST /x HTTP/1.1\r\n", 2, true},
		{"PROPFIND /dav HTTP/1.1\r\n", 0, true},
		{"BREW /pot HTTP/1.1\r\n", 0, true},
		{"get /admin HTTP/1.1\r\n", 0, true},
		{"OPTIONS * HTTP/1.1\r\n", 0, true},
		{"GET http://api.test/ HTTP/1.1\r\n", 0, true},
		{"CONNECT api.test:443 HTTP/1.1\r\n", 0, true},
		{"SSH-2.0-OpenSSH_9.2p1 Debian\r\n", 0, false},
		{"EHLO mail.example\r\n", 0, false},
		{"a1 LOGIN bob secret\r\n", 0, false},
		{"PING\r\n", 0, false},
		{"\x16\x03\x01\x00", 0, false},
		{"\r\n\r\n\r\n\r\n\r\nGET / HTTP/1.1", 10, true},
		{"G1 /admin HTTP/1.1\r\n", 0, true},
		{"GET ws://x/admin HTTP/1.1\r\n", 0, true},
		{"get k\r\n", 0, false},
		{"SET k v\r\n", 0, false},
	}
	for _, tt := range tests {
		a, b := net.Pipe()
		go func() { a.Write([]byte(tt.in)); a.Close() }()
		skip, ok := sniffHTTP(newPeekedConn(b, 64))
		if skip != tt.skip || ok != tt.ok {
			t.Errorf("sniffHTTP(%q) = %d, %v; want %d, %v", tt.in, skip, ok, tt.skip, tt.ok)
		}
		b.Close()
	}
}
