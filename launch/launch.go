// Package launch runs one command with its egress intercepted: it makes a
// transient cgroup, has the caller attach interception to it, starts the
// command directly inside it (so not even its first connect escapes), with
// the CA-trust variables set and never a proxy variable, passes stdio and
// the exit status through, and removes the cgroup afterwards. It is the
// engine of `sluice run`.
//
// The command must not leave the cgroup, even as root: it starts in new
// cgroup and mount namespaces, through a child half of sluice (Child) that
// makes the cgroup mounts read-only, drops the capabilities that lead
// around the hooks (DroppedCaps) and then execs it.
package launch

import (
	"context"
	"github.com/sluicehq/sluice/ca"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"
)

// Options describe one run.
type Options struct {
	// Argv is the command and its arguments.
	Argv []string
	// Env is the child's base environment (os.Environ() when nil).
	Env []string
	// Stdin, Stdout and Stderr are passed to the child as they are.
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	// Trust, when its Bundle is set, is where the trust variables point
	// (TrustEnv, and JAVA_TOOL_OPTIONS when Trust.JavaTrustStore is set).
	Trust Trust
	// CAPEM, when set and Trust.Bundle is not, is the Sluice CA: Run
	// writes the bundle and the Java trust store (WriteTrust) into a
	// temporary directory of its own, removed when Run returns, and points
	// the trust variables at them.
	CAPEM []byte
	// Cgroup2Mount is where cgroup v2 is mounted (see cgroup2.Mount).
	Cgroup2Mount string
	// Intercept is called with the transient cgroup (path relative to the
	// mount, and the absolute directory) before the child starts; the
	// child starts only once it returns nil.
	Intercept func(ctx context.Context, cgroupPath, cgroupDir string) error
	// InterruptWait is how long the child gets to exit on its own once
	// ctx is cancelled (a terminal's Ctrl-C reached it as well as sluice)
	// before it is sent SIGTERM. Default 2s.
	InterruptWait time.Duration
	// StopGrace is how long the child gets between SIGTERM and SIGKILL.
	// Default 10s.
	StopGrace time.Duration
	// KeepCaps leaves DroppedCaps in the command's capability sets
	// (--keep-caps). A root command can then leave its cgroup, detach the
	// hooks or use raw sockets, and so go around the interception.
	KeepCaps bool
	// Log receives, at Info, the protections that could not be set up on
	// this host (say, /sys/fs/cgroup could not be made read-only); nil
	// discards them.
	Log *slog.Logger
}

func (o Options) waits() (interrupt, grace time.Duration) {
	interrupt, grace = o.InterruptWait, o.StopGrace
	if interrupt <= 0 {
		interrupt = 2 * time.Second
	}
	if grace <= 0 {
		grace = 10 * time.Second
	}
	return interrupt, grace
}

// TrustEnv and JavaToolOptionsEnv: see ca.TrustEnv, their one owner
// (the Kubernetes webhook sets the same variables).
var TrustEnv = ca.TrustEnv

// JavaToolOptionsEnv is ca.JavaToolOptionsEnv.
const JavaToolOptionsEnv = ca.JavaToolOptionsEnv

// proxyEnv are removed from the child's environment: interception is
// transparent, and a proxy variable would send traffic around it (curl,
// Go, Python, wget, npm, pip, gRPC, and SOCKS-aware clients).
var proxyEnv = []string{
	"HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "FTP_PROXY",
	"http_proxy", "https_proxy", "all_proxy", "no_proxy", "ftp_proxy",
	"npm_config_proxy", "npm_config_https_proxy", "PIP_PROXY",
	"GRPC_PROXY", "grpc_proxy", "SOCKS_PROXY", "socks_proxy", "SOCKS5_PROXY",
}

// childEnv is base without proxy variables, plus the trust variables
// when tr.Bundle is set: TrustEnv replaced by the bundle, and the Java
// trust-store properties appended to JAVA_TOOL_OPTIONS when
// tr.JavaTrustStore is set.
func childEnv(base []string, tr Trust) []string {
	if base == nil {
		base = os.Environ()
	}
	drop := map[string]bool{}
	for _, k := range proxyEnv {
		drop[k] = true
	}
	if tr.Bundle != "" {
		for _, k := range TrustEnv {
			drop[k] = true
		}
	}
	java := tr.Bundle != "" && tr.JavaTrustStore != ""
	oldJava := ""
	env := make([]string, 0, len(base)+len(TrustEnv)+1)
	for _, kv := range base {
		k, v, _ := strings.Cut(kv, "=")
		switch {
		case drop[k]:
		case java && k == JavaToolOptionsEnv:
			oldJava = v
		default:
			env = append(env, kv)
		}
	}
	if tr.Bundle != "" {
		for _, k := range TrustEnv {
			env = append(env, k+"="+tr.Bundle)
		}
	}
	if java {
		env = append(env, JavaToolOptionsEnv+"="+javaToolOptions(oldJava, tr))
	}
	return env
}
