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
	if !sniffHTTP(pc) {
		t.Fatal("not sniffed as HTTP")
	}
	if _, err := pc.Peek(65); !errors.Is(err, bufio.ErrBufferFull) {
		t.Fatalf("peek past max: %v", err)
	}
	all, err := io.ReadAll(pc)
	if err != nil || string(all) != string(msg) {
		t.Fatalf("read %q %v", all, err)
	}
}
