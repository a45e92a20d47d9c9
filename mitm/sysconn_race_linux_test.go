//go:build race

package mitm

import (
	"bytes"
	"os"
	"os/exec"
	"testing"
	"time"
)

// Under `go test -race` (make race), a buffer that sysConn's raw read
// fills while another goroutine reads it is a data race the detector
// reports, as it would for net.TCPConn's Read. The race runs in a child
// process of this test binary, since a race the detector finds fails
// the test it happens in; this test reads the child's report.
func TestRawReadIsSeenByTheRaceDetector(t *testing.T) {
	if os.Getenv("SLUICE_RACE_CHILD") == "1" {
		raceOnReadBuffer(t)
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestRawReadIsSeenByTheRaceDetector$", "-test.count=1")
	cmd.Env = append(os.Environ(), "SLUICE_RACE_CHILD=1")
	out, _ := cmd.CombinedOutput() // the child fails: that is its report
	if !bytes.Contains(out, []byte("WARNING: DATA RACE")) || !bytes.Contains(out, []byte("readFD")) {
		t.Fatalf("the race detector did not report a raw read into a buffer read elsewhere:\n%s", out)
	}
}

// raceOnReadBuffer reads into buf through a sysConn while a goroutine
// reads buf with nothing ordering the two.
func raceOnReadBuffer(t *testing.T) {
	c, s := tcpConns(t)
	sc := newSysConn(s)
	buf := make([]byte, 16)
	seen := make(chan byte, 1)
	go func() { seen <- buf[0] }()
	time.Sleep(50 * time.Millisecond) // the goroutine has read buf
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	if _, err := sc.Read(buf); err != nil {
		t.Fatal(err)
	}
	<-seen
}
