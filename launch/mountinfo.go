package launch

import (
	"bufio"
	"io"
	"strconv"
	"strings"
)

// cgroupMounts returns, in the order of a /proc/self/mountinfo listing,
// the mount points the child's cgroup view is made of: every cgroup and
// cgroup2 mount, and whatever is mounted at /sys/fs/cgroup or below it
// (the tmpfs of a hybrid layout). A mount point is listed once.
func cgroupMounts(r io.Reader) []string {
	var out []string
	seen := map[string]bool{}
	s := bufio.NewScanner(r)
	s.Buffer(make([]byte, 64*1024), 1024*1024)
	for s.Scan() {
		// 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw
		pre, post, ok := strings.Cut(s.Text(), " - ")
		f, g := strings.Fields(pre), strings.Fields(post)
		if !ok || len(f) < 5 || len(g) < 1 {
			continue
		}
		mp := unescapeMountinfo(f[4])
		under := mp == "/sys/fs/cgroup" || strings.HasPrefix(mp, "/sys/fs/cgroup/")
		if (g[0] == "cgroup" || g[0] == "cgroup2" || under) && !seen[mp] {
			seen[mp] = true
			out = append(out, mp)
		}
	}
	return out
}

// unescapeMountinfo undoes the octal escapes (\040 for a space) that
// mountinfo uses for space, tab, newline and backslash.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
