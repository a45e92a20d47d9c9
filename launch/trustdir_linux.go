package launch

import (
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/sluicehq/sluice/audit"
)

// trustDirPrefix names the temporary directory a run writes its CA bundle
// and Java trust store into: sluice-run-<pid>-<random>, removed at exit.
const trustDirPrefix = "sluice-run-"

// sweepTrustDirs removes the trust directories in tmp that uid owns and
// whose run is gone (no process with that pid): a run ended by SIGKILL
// cannot remove its own. A live pid, even a reused one, keeps its
// directory; a name without a pid is not one of ours.
func sweepTrustDirs(tmp string, uid int, log *slog.Logger) {
	ents, err := os.ReadDir(tmp)
	if err != nil {
		return
	}
	for _, e := range ents {
		rest, ok := strings.CutPrefix(e.Name(), trustDirPrefix)
		if !ok || !e.IsDir() {
			continue
		}
		ps, _, ok := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(ps)
		if !ok || err != nil || pid <= 0 || alive(pid) {
			continue
		}
		dir := filepath.Join(tmp, e.Name())
		var st syscall.Stat_t
		if syscall.Lstat(dir, &st) != nil || int(st.Uid) != uid {
			continue
		}
		if err := os.RemoveAll(dir); err != nil && log != nil {
			log.Warn("remove a stale CA bundle directory", audit.KeyPath, dir, audit.KeyError, err)
		}
	}
}

// alive reports whether a process with pid exists (EPERM: it exists but
// belongs to someone else).
func alive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || err == syscall.EPERM
}
