package cgroup2

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strings"
)

// ErrNoCgroup2 is returned when no cgroup2 filesystem is mounted.
var ErrNoCgroup2 = errors.New("find cgroup2 mount: no cgroup2 filesystem in /proc/self/mountinfo; mount one with `mount -t cgroup2 none /sys/fs/cgroup`")

// parseMount returns the first cgroup2 mount point whose root is
// the hierarchy's root ("/"), else the first cgroup2 mount point.
//
// A mountinfo line is:
//
//	36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
//
// fields: id, parent, major:minor, root, mount point, options, optional
// fields up to "-", then fs type, source, super options. Octal escapes
// (\040 for a space) are decoded in the mount point.
func parseMount(r io.Reader) (string, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	var fallback string
	for sc.Scan() {
		root, mp, fstype, ok := mountLine(sc.Text())
		if !ok || fstype != "cgroup2" {
			continue
		}
		if root == "/" {
			return mp, nil
		}
		if fallback == "" {
			fallback = mp
		}
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("find cgroup2 mount: read mountinfo: %w", err)
	}
	if fallback != "" {
		return fallback, nil
	}
	return "", ErrNoCgroup2
}

// mountLine splits a mountinfo line (see parseMount) into the root, the
// mount point (escapes decoded) and the filesystem type; ok is false for
// a line without them.
func mountLine(line string) (root, point, fstype string, ok bool) {
	f := strings.Fields(line)
	if len(f) < 7 {
		return "", "", "", false
	}
	for i := 6; i+1 < len(f); i++ {
		if f[i] == "-" {
			return f[3], unescapeMount(f[4]), f[i+1], true
		}
	}
	return "", "", "", false
}

// unescapeMount decodes the \ooo octal escapes of mountinfo.
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && isOctal(s[i+1:i+4]) {
			v := (s[i+1]-'0')<<6 | (s[i+2]-'0')<<3 | (s[i+3] - '0')
			b.WriteByte(v)
			i += 3
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isOctal(s string) bool {
	if len(s) != 3 {
		return false
	}
	for i := 0; i < 3; i++ {
		if s[i] < '0' || s[i] > '7' {
			return false
		}
	}
	return s[0] <= '3'
}

// ViewMounts returns, in the order of a /proc/self/mountinfo listing,
// the mount points the child's cgroup view is made of: every cgroup and
// cgroup2 mount, and whatever is mounted at /sys/fs/cgroup or below it
// (the tmpfs of a hybrid layout). A mount point is listed once.
func ViewMounts(r io.Reader) []string {
	var out []string
	seen := map[string]bool{}
	s := bufio.NewScanner(r)
	s.Buffer(make([]byte, 64*1024), 1024*1024)
	for s.Scan() {
		_, mp, fstype, ok := mountLine(s.Text())
		if !ok {
			continue
		}
		under := mp == "/sys/fs/cgroup" || strings.HasPrefix(mp, "/sys/fs/cgroup/")
		if (fstype == "cgroup" || fstype == "cgroup2" || under) && !seen[mp] {
			seen[mp] = true
			out = append(out, mp)
		}
	}
	return out
}
