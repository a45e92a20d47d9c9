package agent

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/sluicehq/sluice/config"
)

// holderDir holds one record per running agent: which process holds
// which intercept address and pin directory. A record outlives a crashed
// agent; it then names a dead process (or a reused pid with another
// start time) and is ignored. Start, Close and Cleanup share it, so the
// agent and `sluice agent --cleanup` must see the same /run and the same
// pid namespace (hostPID in Kubernetes, as for the agent's other needs).
const holderDir = "/run/sluice"

// holder is one record of holderDir.
type holder struct {
	PID int `json:"pid"`
	// Start is the process start time in clock ticks after boot
	// (/proc/PID/stat field 22): with the pid it names one process.
	Start         uint64     `json:"start"`
	InterceptIPv4 netip.Addr `json:"interceptIPv4"`
	InterceptIPv6 netip.Addr `json:"interceptIPv6"`
	BPFFS         string     `json:"bpffs"`
	path          string
}

// holderFor is the record this process writes for cfg.
func holderFor(cfg config.Agent) (*holder, error) {
	start, err := procStart(os.Getpid())
	if err != nil {
		return nil, err
	}
	return &holder{
		PID: os.Getpid(), Start: start,
		InterceptIPv4: cfg.InterceptIPv4, InterceptIPv6: cfg.InterceptIPv6,
		BPFFS: filepath.Clean(cfg.BPFFS),
		path:  filepath.Join(holderDir, "agent-"+cfg.InterceptIPv4.String()+".json"),
	}, nil
}

// procStart reads the start time of process pid.
func procStart(pid int) (uint64, error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0, fmt.Errorf("read start time of pid %d: %w", pid, err)
	}
	return parseStatStart(b)
}

// parseStatStart returns field 22 (starttime) of a /proc/PID/stat line.
// The command name (field 2) is in parentheses and may hold spaces and
// parentheses itself, so fields are counted after the last ')'.
func parseStatStart(stat []byte) (uint64, error) {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, errors.New("parse /proc stat: no command name")
	}
	f := strings.Fields(string(stat[i+1:])) // f[0] is field 3
	if len(f) < 20 {
		return 0, fmt.Errorf("parse /proc stat: %d fields after the command name, want at least 20", len(f))
	}
	n, err := strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("parse /proc stat start time %q: %w", f[19], err)
	}
	return n, nil
}

// alive reports whether the record's process still runs.
func (h *holder) alive() bool {
	s, err := procStart(h.PID)
	return err == nil && s == h.Start
}

// overlaps names what of cfg the record holds too.
func (h *holder) overlaps(cfg config.Agent) []string {
	var out []string
	if cfg.InterceptIPv4.IsValid() && h.InterceptIPv4 == cfg.InterceptIPv4 {
		out = append(out, "intercept address "+cfg.InterceptIPv4.String())
	}
	if cfg.InterceptIPv6.IsValid() && h.InterceptIPv6 == cfg.InterceptIPv6 {
		out = append(out, "intercept address "+cfg.InterceptIPv6.String())
	}
	if cfg.BPFFS != "" && h.BPFFS == filepath.Clean(cfg.BPFFS) {
		out = append(out, "pins under "+h.BPFFS)
	}
	return out
}

// holders reads every record of holderDir (unreadable ones are skipped:
// a record half written by a crash names no live agent).
func holders() []*holder {
	paths, _ := filepath.Glob(filepath.Join(holderDir, "agent-*.json"))
	var out []*holder
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		h := &holder{path: p}
		if json.Unmarshal(b, h) == nil && h.PID > 0 {
			out = append(out, h)
		}
	}
	return out
}

// checkHeld returns a HeldError for each live agent process other than
// this one that holds part of cfg's state; stale records that overlap
// cfg are returned apart, for Cleanup to remove.
func checkHeld(action string, cfg config.Agent) (stale []*holder, err error) {
	var errs []error
	for _, h := range holders() {
		what := h.overlaps(cfg)
		if len(what) == 0 || h.PID == os.Getpid() {
			continue
		}
		if !h.alive() {
			stale = append(stale, h)
			continue
		}
		errs = append(errs, &HeldError{Action: action, PID: h.PID, What: what})
	}
	return stale, errors.Join(errs...)
}

// write records h (atomically: a reader sees the old record or the new).
func (h *holder) write() error {
	if err := os.MkdirAll(holderDir, 0o755); err != nil {
		return fmt.Errorf("record agent holder: %w", err)
	}
	b, err := json.Marshal(h)
	if err != nil {
		return fmt.Errorf("record agent holder: %w", err)
	}
	tmp := h.path + ".tmp" + strconv.Itoa(h.PID)
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return fmt.Errorf("record agent holder %s: %w", h.path, err)
	}
	if err := os.Rename(tmp, h.path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("record agent holder %s: %w", h.path, err)
	}
	return nil
}

// release removes h's record unless another process wrote it since (an
// agent started with Force).
func (h *holder) release() error {
	b, err := os.ReadFile(h.path)
	if err != nil {
		return nil
	}
	var cur holder
	if json.Unmarshal(b, &cur) == nil && (cur.PID != h.PID || cur.Start != h.Start) {
		return nil
	}
	if err := os.Remove(h.path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove agent holder record %s: %w", h.path, err)
	}
	return nil
}

// claim refuses, unless force, when another live agent holds part of
// cfg's state, and records this process as its holder.
func claim(cfg config.Agent, force bool) (*holder, error) {
	if _, err := checkHeld("start agent", cfg); err != nil && !force {
		return nil, err
	}
	h, err := holderFor(cfg)
	if err != nil {
		return nil, err
	}
	if err := h.write(); err != nil {
		return nil, err
	}
	return h, nil
}
