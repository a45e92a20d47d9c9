package agent

import (
	"os"
	"strconv"

	lru "github.com/hashicorp/golang-lru/v2"
)

// procImage names one process image as the kernel saw it at a connect:
// the tgid, the process's start time (the group leader's start_time, ns
// since boot) and its exec generation (task->self_exec_id), which the
// connect hooks read from the current task (sluice.c fill_identity).
type procImage struct {
	pid       int
	startTime uint64
	execID    uint64
}

// cacheable reports whether the hooks named the image; an event of a
// kernel that did not (zeros) is never cached.
func (p procImage) cacheable() bool { return p.pid > 0 && (p.startTime != 0 || p.execID != 0) }

// exeCache remembers the executable path (/proc/PID/exe) of process
// images, so that a process that connects again and again costs one
// readlink, not one per connect. It is keyed by procImage, never by pid
// alone, which makes it exec-safe:
//   - execve increments self_exec_id (begin_new_exec), so the first
//     connect after an exec has a new key and reads the link again: a
//     process that execs another binary is attributed that binary, never
//     the one it connected as before;
//   - a reused pid belongs to a process that started later, so its start
//     time differs and it never inherits a dead process's exe;
//   - threads and children copy self_exec_id, and every thread of a
//     process names the leader's start time, so they share one entry.
//
// The link is read after the connect, as before this cache: a process
// that execs between its connect and the read is attributed the new
// binary under the old key. The entry is then wrong in the same way the
// uncached read was for that event, and a later connect of the new image
// has a new key. prctl(PR_SET_MM_EXE_FILE) changes the link without an
// exec; the entry keeps the binary the image was exec'd from.
//
// It is bounded (least recently used entries go) and safe for concurrent
// use: the event reader and the accepting goroutines share it.
type exeCache struct {
	read func(pid int) (string, error)
	lru  *lru.Cache[procImage, string]
}

// exeCacheSize bounds the process images remembered (each some 100 bytes).
const exeCacheSize = 4096

func newExeCache(max int) *exeCache {
	c, _ := lru.New[procImage, string](max) // max > 0: no error
	return &exeCache{read: readExe, lru: c}
}

// readExe reads /proc/PID/exe.
func readExe(pid int) (string, error) {
	return os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe")
}

// exe returns the executable of img: the remembered one, or what
// /proc/PID/exe says now ("" when it cannot be read: the process is gone,
// or it is a kernel thread). Failed reads are not remembered.
func (c *exeCache) exe(img procImage) string {
	if img.pid <= 0 {
		return ""
	}
	if c == nil {
		exe, _ := readExe(img.pid)
		return exe
	}
	if !img.cacheable() {
		exe, _ := c.read(img.pid)
		return exe
	}
	if exe, ok := c.lru.Get(img); ok {
		return exe
	}
	exe, err := c.read(img.pid)
	if err != nil || exe == "" {
		return ""
	}
	c.lru.ContainsOrAdd(img, exe)
	return exe
}
