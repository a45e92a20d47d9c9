package agent

import (
	"errors"
	"testing"
)

// fakeProc is /proc/PID/exe as a map, counting reads.
type fakeProc struct {
	exe   map[int]string
	reads int
}

func (f *fakeProc) read(pid int) (string, error) {
	f.reads++
	if e, ok := f.exe[pid]; ok {
		return e, nil
	}
	return "", errors.New("no such process")
}

func newFakeCache(max int, f *fakeProc) *exeCache {
	c := newExeCache(max)
	c.read = f.read
	return c
}

func TestExeCacheReadsOncePerImage(t *testing.T) {
	f := &fakeProc{exe: map[int]string{7: "/usr/bin/curl"}}
	c := newFakeCache(8, f)
	img := procImage{pid: 7, startTime: 100, execID: 1}
	for range 5 {
		if got := c.exe(img); got != "/usr/bin/curl" {
			t.Fatalf("exe = %q", got)
		}
	}
	if f.reads != 1 {
		t.Errorf("%d reads of /proc/7/exe for one image, want 1", f.reads)
	}
}

// The attacker: connect as an allowed binary, exec another, connect again.
func TestExeCacheExecIsANewImage(t *testing.T) {
	f := &fakeProc{exe: map[int]string{7: "/usr/bin/allowed"}}
	c := newFakeCache(8, f)
	if got := c.exe(procImage{pid: 7, startTime: 100, execID: 1}); got != "/usr/bin/allowed" {
		t.Fatalf("exe = %q", got)
	}
	f.exe[7] = "/tmp/evil" // execve: same pid, same start, exec generation 2
	if got := c.exe(procImage{pid: 7, startTime: 100, execID: 2}); got != "/tmp/evil" {
		t.Errorf("after execve exe = %q, want /tmp/evil", got)
	}
}

func TestExeCacheReusedPidIsANewImage(t *testing.T) {
	f := &fakeProc{exe: map[int]string{7: "/usr/bin/allowed"}}
	c := newFakeCache(8, f)
	c.exe(procImage{pid: 7, startTime: 100, execID: 1})
	f.exe[7] = "/tmp/evil" // pid 7 died; a later process got it
	if got := c.exe(procImage{pid: 7, startTime: 900, execID: 1}); got != "/tmp/evil" {
		t.Errorf("reused pid exe = %q, want /tmp/evil", got)
	}
}

func TestExeCacheUnnamedImagesAreNotCached(t *testing.T) {
	f := &fakeProc{exe: map[int]string{7: "/usr/bin/a"}}
	c := newFakeCache(8, f)
	c.exe(procImage{pid: 7}) // a kernel without the task's BTF names no image
	f.exe[7] = "/usr/bin/b"
	if got := c.exe(procImage{pid: 7}); got != "/usr/bin/b" {
		t.Errorf("exe = %q, want /usr/bin/b (read again)", got)
	}
	if got := c.exe(procImage{pid: 0, startTime: 1}); got != "" || f.reads != 2 {
		t.Errorf("pid 0: exe %q after %d reads, want none", got, f.reads)
	}
}

func TestExeCacheFailedReadsAreNotCached(t *testing.T) {
	f := &fakeProc{exe: map[int]string{}}
	c := newFakeCache(8, f)
	img := procImage{pid: 7, startTime: 100, execID: 1}
	if got := c.exe(img); got != "" {
		t.Fatalf("exe of a gone process = %q", got)
	}
	f.exe[7] = "/usr/bin/curl"
	if got := c.exe(img); got != "/usr/bin/curl" {
		t.Errorf("exe = %q after a failed read, want it read again", got)
	}
}

func TestExeCacheIsBounded(t *testing.T) {
	f := &fakeProc{exe: map[int]string{}}
	for pid := 1; pid <= 10; pid++ {
		f.exe[pid] = "/bin/x"
	}
	c := newFakeCache(3, f)
	for pid := 1; pid <= 10; pid++ {
		c.exe(procImage{pid: pid, startTime: 1})
	}
	if n := c.lru.Len(); n != 3 {
		t.Fatalf("%d entries, want 3", n)
	}
	c.exe(procImage{pid: 10, startTime: 1}) // the most recent stays
	c.exe(procImage{pid: 1, startTime: 1})  // the oldest went
	if f.reads != 11 {
		t.Errorf("%d reads, want 11 (pid 10 remembered, pid 1 read again)", f.reads)
	}
}
