package deploy

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"net/netip"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/sluicehq/sluice/admin"
	"github.com/sluicehq/sluice/config"
	"github.com/sluicehq/sluice/policy"
	"github.com/sluicehq/sluice/webhook"
)

const manifestDir = "kubernetes"

// readManifests returns every YAML file under deploy/kubernetes, keyed by
// its slash path relative to that directory.
func readManifests(t *testing.T) map[string][]byte {
	t.Helper()
	files := map[string][]byte{}
	err := filepath.WalkDir(manifestDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() || (!strings.HasSuffix(p, ".yaml") && !strings.HasSuffix(p, ".yml")) {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(manifestDir, p)
		if err != nil {
			return err
		}
		files[filepath.ToSlash(rel)] = b
		return nil
	})
	if err != nil {
		t.Fatalf("read manifests: %v", err)
	}
	if len(files) == 0 {
		t.Fatalf("no YAML files under %s", manifestDir)
	}
	return files
}

// object is one YAML document of a manifest file.
type object struct {
	file string
	raw  []byte // the document re-encoded, for typed decoding
	head struct {
		APIVersion string `yaml:"apiVersion"`
		Kind       string `yaml:"kind"`
		Metadata   struct {
			Name      string `yaml:"name"`
			Namespace string `yaml:"namespace"`
		} `yaml:"metadata"`
	}
}

func (o *object) id() string { return o.head.Kind + "/" + o.head.Metadata.Name }

// parse splits every file into its documents and checks that each is a
// Kubernetes object (a Kustomization has no metadata.name).
func parse(files map[string][]byte) ([]*object, []error) {
	var objs []*object
	var errs []error
	names := slices.Sorted(maps.Keys(files))
	for _, name := range names {
		dec := yaml.NewDecoder(bytes.NewReader(files[name]))
		for i := 0; ; i++ {
			var n yaml.Node
			err := dec.Decode(&n)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: document %d: %w", name, i, err))
				break
			}
			if len(n.Content) == 0 || (n.Content[0].Kind == yaml.ScalarNode && n.Content[0].Tag == "!!null") {
				continue // an empty document (a trailing ---)
			}
			raw, err := yaml.Marshal(&n)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: document %d: %w", name, i, err))
				continue
			}
			o := &object{file: name, raw: raw}
			if err := n.Decode(&o.head); err != nil {
				errs = append(errs, fmt.Errorf("%s: document %d: not an object: %w", name, i, err))
				continue
			}
			if o.head.APIVersion == "" || o.head.Kind == "" {
				errs = append(errs, fmt.Errorf("%s: document %d: apiVersion %q, kind %q: both are required", name, i, o.head.APIVersion, o.head.Kind))
			}
			if o.head.Metadata.Name == "" && o.head.Kind != "Kustomization" {
				errs = append(errs, fmt.Errorf("%s: document %d (%s): metadata.name is required", name, i, o.head.Kind))
			}
			objs = append(objs, o)
		}
	}
	return objs, errs
}

// blockStart returns the line (1-based) of file where the block scalar
// "key: |" starts its content, 0 if not found: errors from the embedded
// file's parser count lines from there.
func blockStart(file []byte, key string) int {
	for i, l := range strings.Split(string(file), "\n") {
		if t := strings.TrimSpace(l); strings.HasPrefix(t, key+": |") {
			return i + 2
		}
	}
	return 0
}

// The parts of the objects the checks read.
type configMap struct {
	Data map[string]string `yaml:"data"`
}

type secret struct {
	Type       string            `yaml:"type"`
	Data       map[string]string `yaml:"data"`
	StringData map[string]string `yaml:"stringData"`
}

type kustomization struct {
	Resources []string `yaml:"resources"`
}

type httpGet struct {
	Host string `yaml:"host"`
	Port any    `yaml:"port"`
	Path string `yaml:"path"`
}

type probe struct {
	HTTPGet *httpGet `yaml:"httpGet"`
}

type volumeMount struct {
	Name             string `yaml:"name"`
	MountPath        string `yaml:"mountPath"`
	SubPath          string `yaml:"subPath"`
	ReadOnly         bool   `yaml:"readOnly"`
	MountPropagation string `yaml:"mountPropagation"`
}

type envVar struct {
	Name      string `yaml:"name"`
	Value     string `yaml:"value"`
	ValueFrom *struct {
		FieldRef *struct {
			FieldPath string `yaml:"fieldPath"`
		} `yaml:"fieldRef"`
	} `yaml:"valueFrom"`
}

type container struct {
	Name            string        `yaml:"name"`
	Image           string        `yaml:"image"`
	Command         []string      `yaml:"command"`
	Args            []string      `yaml:"args"`
	Env             []envVar      `yaml:"env"`
	LivenessProbe   *probe        `yaml:"livenessProbe"`
	ReadinessProbe  *probe        `yaml:"readinessProbe"`
	VolumeMounts    []volumeMount `yaml:"volumeMounts"`
	SecurityContext struct {
		Privileged *bool `yaml:"privileged"`
		RunAsUser  *int  `yaml:"runAsUser"`
	} `yaml:"securityContext"`
	Resources struct {
		Requests map[string]string `yaml:"requests"`
		Limits   map[string]string `yaml:"limits"`
	} `yaml:"resources"`
}

type keyPath struct {
	Key  string `yaml:"key"`
	Path string `yaml:"path"`
}

type volume struct {
	Name      string `yaml:"name"`
	ConfigMap *struct {
		Name  string    `yaml:"name"`
		Items []keyPath `yaml:"items"`
	} `yaml:"configMap"`
	Secret *struct {
		SecretName  string    `yaml:"secretName"`
		DefaultMode *int      `yaml:"defaultMode"`
		Optional    *bool     `yaml:"optional"`
		Items       []keyPath `yaml:"items"`
	} `yaml:"secret"`
	HostPath *struct {
		Path string `yaml:"path"`
	} `yaml:"hostPath"`
	EmptyDir any `yaml:"emptyDir"`
}

type podSpec struct {
	ServiceAccountName           string      `yaml:"serviceAccountName"`
	AutomountServiceAccountToken *bool       `yaml:"automountServiceAccountToken"`
	HostNetwork                  bool        `yaml:"hostNetwork"`
	HostPID                      bool        `yaml:"hostPID"`
	DNSPolicy                    string      `yaml:"dnsPolicy"`
	InitContainers               []container `yaml:"initContainers"`
	Containers                   []container `yaml:"containers"`
	Volumes                      []volume    `yaml:"volumes"`
	Tolerations                  []struct {
		Operator string `yaml:"operator"`
		Key      string `yaml:"key"`
	} `yaml:"tolerations"`
}

type policyRule struct {
	APIGroups     []string `yaml:"apiGroups"`
	Resources     []string `yaml:"resources"`
	ResourceNames []string `yaml:"resourceNames"`
	Verbs         []string `yaml:"verbs"`
}

type role struct {
	Rules []policyRule `yaml:"rules"`
}

type subject struct {
	Kind      string `yaml:"kind"`
	Name      string `yaml:"name"`
	Namespace string `yaml:"namespace"`
}

type roleBinding struct {
	RoleRef struct {
		Kind string `yaml:"kind"`
		Name string `yaml:"name"`
	} `yaml:"roleRef"`
	Subjects []subject `yaml:"subjects"`
}

type podTemplateOwner struct {
	Spec struct {
		Template struct {
			Spec podSpec `yaml:"spec"`
		} `yaml:"template"`
	} `yaml:"spec"`
}

func decode[T any](o *object) (T, error) {
	var v T
	if err := yaml.Unmarshal(o.raw, &v); err != nil {
		return v, fmt.Errorf("%s (%s): %w", o.file, o.id(), err)
	}
	return v, nil
}

func find(objs []*object, kind, name string) *object {
	for _, o := range objs {
		if o.head.Kind == kind && o.head.Metadata.Name == name {
			return o
		}
	}
	return nil
}

// check runs every consistency check over the manifest files and returns
// all problems at once.
func check(files map[string][]byte) error {
	objs, errs := parse(files)
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	errs = append(errs, checkKustomization(files, objs)...)

	// The agent's configuration, as `sluice agent --config` would load it.
	cfg := config.Default()
	cmo := find(objs, "ConfigMap", "sluice-config")
	if cmo == nil {
		return errors.Join(append(errs, errors.New("no ConfigMap sluice-config"))...)
	}
	cm, err := decode[configMap](cmo)
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	text, ok := cm.Data["config.yaml"]
	if !ok {
		return errors.Join(append(errs, errors.New("ConfigMap sluice-config: no data key config.yaml"))...)
	}
	if err := config.Parse([]byte(text), &cfg); err != nil {
		return errors.Join(append(errs, fmt.Errorf("ConfigMap sluice-config config.yaml (its line 1 is line %d of %s): %w", blockStart(files[cmo.file], "config.yaml"), cmo.file, err))...)
	}
	if cfg.Admin.Listen == "" {
		errs = append(errs, errors.New("sluice-config: admin.listen is empty: the probes need it"))
	} else if err := admin.ValidateListen(cfg.Admin.Listen, cfg.Agent.InterceptIPv4, cfg.Agent.InterceptIPv6); err != nil {
		errs = append(errs, fmt.Errorf("sluice-config: %w", err))
	}
	if cfg.Agent.FailMode != "closed" {
		errs = append(errs, fmt.Errorf("sluice-config: agent.failMode %q: the Kubernetes default is closed", cfg.Agent.FailMode))
	}
	// agent.cgroups ships empty on purpose: applying the manifests must
	// not change any pod's traffic until the operator selects pods.
	if len(cfg.Agent.Cgroups) != 0 {
		errs = append(errs, errors.New("sluice-config: agent.cgroups must ship empty: selecting pods is the operator's choice (see README)"))
	}
	if cfg.PolicyFile == "" {
		errs = append(errs, errors.New("sluice-config: policyFile is empty: the sluice-policy ConfigMap would be ignored"))
	}
	if f := cfg.Audit.File; f != "stdout" && f != "" {
		errs = append(errs, fmt.Errorf("sluice-config: audit.file %q: the DaemonSet expects stdout (kubectl logs)", f))
	}

	// The policy, as the agent would load it.
	pmo := find(objs, "ConfigMap", "sluice-policy")
	var policyKeys map[string]string
	if pmo == nil {
		errs = append(errs, errors.New("no ConfigMap sluice-policy"))
	} else if pm, err := decode[configMap](pmo); err != nil {
		errs = append(errs, err)
	} else {
		policyKeys = pm.Data
		key := path.Base(cfg.PolicyFile)
		if text, ok := pm.Data[key]; !ok {
			errs = append(errs, fmt.Errorf("ConfigMap sluice-policy: no data key %q (the base name of policyFile %s)", key, cfg.PolicyFile))
		} else if _, err := policy.Parse([]byte(text), "sluice-policy/"+key); err != nil {
			errs = append(errs, fmt.Errorf("ConfigMap sluice-policy %s (its line 1 is line %d of %s): %w", key, blockStart(files[pmo.file], key), pmo.file, err))
		} else if p, err := policy.Decode([]byte(text), key); err != nil {
			errs = append(errs, err)
		} else if p.Mode != "audit" {
			errs = append(errs, fmt.Errorf("ConfigMap sluice-policy: mode %q: start in audit mode", p.Mode))
		}
	}

	errs = append(errs, checkDaemonSet(objs, cfg, policyKeys)...)
	errs = append(errs, checkImages(objs)...)
	errs = append(errs, checkCASecret(objs)...)
	errs = append(errs, checkWorkload(objs)...)
	errs = append(errs, checkWebhook(objs)...)
	return errors.Join(errs...)
}

// checkKustomization: every listed resource exists, and every top-level
// manifest is listed (examples/ is not applied).
func checkKustomization(files map[string][]byte, objs []*object) []error {
	var errs []error
	var k *object
	for _, o := range objs {
		if o.head.Kind == "Kustomization" {
			k = o
		}
	}
	if k == nil {
		return []error{errors.New("no kustomization.yaml: `kubectl apply -k deploy/kubernetes` needs one")}
	}
	kz, err := decode[kustomization](k)
	if err != nil {
		return []error{err}
	}
	for _, r := range kz.Resources {
		if _, ok := files[r]; !ok {
			errs = append(errs, fmt.Errorf("kustomization.yaml: resource %q: no such file", r))
		}
	}
	for name := range files {
		if strings.Contains(name, "/") || name == k.file {
			continue
		}
		if !slices.Contains(kz.Resources, name) {
			errs = append(errs, fmt.Errorf("kustomization.yaml: %s is not listed in resources", name))
		}
	}
	return errs
}

// mountFor returns the mount that makes p visible in c: p itself, or the
// nearest directory above it.
func mountFor(c container, p string) (volumeMount, bool) {
	var best volumeMount
	found := false
	for _, m := range c.VolumeMounts {
		mp := path.Clean(m.MountPath)
		if mp == p || strings.HasPrefix(p, mp+"/") {
			if !found || len(mp) > len(path.Clean(best.MountPath)) {
				best, found = m, true
			}
		}
	}
	return best, found
}

func volumeByName(spec podSpec, name string) (volume, bool) {
	for _, v := range spec.Volumes {
		if v.Name == name {
			return v, true
		}
	}
	return volume{}, false
}

// probePort checks one probe against the admin listener: port is
// admin.listen's, host the address the probe must name ("" for the pod's
// own address, which with hostNetwork is the node's).
func probePort(what string, p *probe, wantPath, host string, port uint16) error {
	if p == nil || p.HTTPGet == nil {
		return fmt.Errorf("DaemonSet sluice-agent: %s: want an httpGet probe on port %d, path %s", what, port, wantPath)
	}
	var got int
	switch v := p.HTTPGet.Port.(type) {
	case int:
		got = v
	case string:
		n, err := strconv.Atoi(v)
		if err != nil {
			return fmt.Errorf("DaemonSet sluice-agent: %s port %q: use the number %d (admin.listen's port), not a name", what, v, port)
		}
		got = n
	default:
		return fmt.Errorf("DaemonSet sluice-agent: %s port %v: want %d (admin.listen's port)", what, v, port)
	}
	var errs []error
	if got != int(port) {
		errs = append(errs, fmt.Errorf("DaemonSet sluice-agent: %s port %d: admin.listen's port is %d", what, got, port))
	}
	if p.HTTPGet.Host != host {
		if host == "" {
			errs = append(errs, fmt.Errorf("DaemonSet sluice-agent: %s host %q: with --admin-host the admin API is on the node's address, which is the pod's (hostNetwork): leave host unset", what, p.HTTPGet.Host))
		} else {
			errs = append(errs, fmt.Errorf("DaemonSet sluice-agent: %s host %q: admin.listen is on %s (set host: %s)", what, p.HTTPGet.Host, host, host))
		}
	}
	if p.HTTPGet.Path != wantPath {
		errs = append(errs, fmt.Errorf("DaemonSet sluice-agent: %s path %q: want %s", what, p.HTTPGet.Path, wantPath))
	}
	return errors.Join(errs...)
}

// adminHostFromDownwardAPI checks the argument of --admin-host: a
// $(NAME) the kubelet expands from an env variable NAME set from the
// downward API's status.hostIP.
func adminHostFromDownwardAPI(c container, arg string) error {
	name, ok := strings.CutPrefix(arg, "$(")
	name, ok2 := strings.CutSuffix(name, ")")
	if !ok || !ok2 || name == "" {
		return fmt.Errorf("DaemonSet sluice-agent: --admin-host %q: want $(HOST_IP), an env variable from the downward API (status.hostIP)", arg)
	}
	i := slices.IndexFunc(c.Env, func(e envVar) bool { return e.Name == name })
	if i < 0 {
		return fmt.Errorf("DaemonSet sluice-agent: --admin-host %s: no env %s in the container", arg, name)
	}
	if e := c.Env[i]; e.ValueFrom == nil || e.ValueFrom.FieldRef == nil || e.ValueFrom.FieldRef.FieldPath != "status.hostIP" {
		return fmt.Errorf("DaemonSet sluice-agent: env %s: want valueFrom.fieldRef.fieldPath status.hostIP (the node's address)", name)
	}
	return nil
}

func checkDaemonSet(objs []*object, cfg config.Config, policyKeys map[string]string) []error {
	o := find(objs, "DaemonSet", "sluice-agent")
	if o == nil {
		return []error{errors.New("no DaemonSet sluice-agent")}
	}
	ds, err := decode[podTemplateOwner](o)
	if err != nil {
		return []error{err}
	}
	spec := ds.Spec.Template.Spec
	var errs []error
	fail := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("DaemonSet sluice-agent: "+format, args...))
	}
	if !spec.HostNetwork {
		fail("hostNetwork is not true: the intercept address and admin.listen are on the node's lo")
	}
	if !spec.HostPID {
		fail("hostPID is not true: the agent reads /proc/PID/exe of workloads")
	}
	if spec.DNSPolicy != "ClusterFirstWithHostNet" {
		fail("dnsPolicy %q: want ClusterFirstWithHostNet with hostNetwork", spec.DNSPolicy)
	}
	if !slices.ContainsFunc(spec.Tolerations, func(t struct {
		Operator string `yaml:"operator"`
		Key      string `yaml:"key"`
	}) bool {
		return t.Operator == "Exists" && t.Key == ""
	}) {
		fail("no toleration {operator: Exists}: the agent must run on every node")
	}
	if len(spec.Containers) != 1 {
		fail("%d containers: want one, the agent", len(spec.Containers))
		return errs
	}
	c := spec.Containers[0]
	for _, m := range c.VolumeMounts {
		if _, ok := volumeByName(spec, m.Name); !ok {
			fail("volumeMount %q (%s): no volume of that name", m.Name, m.MountPath)
		}
	}
	for _, v := range spec.Volumes {
		if v.ConfigMap != nil && find(objs, "ConfigMap", v.ConfigMap.Name) == nil {
			fail("volume %q: ConfigMap %q is not in the manifests", v.Name, v.ConfigMap.Name)
		}
	}
	if c.SecurityContext.Privileged == nil || !*c.SecurityContext.Privileged {
		fail("securityContext.privileged is not true: Bidirectional mount propagation (bpffs) requires it")
	}
	if len(c.Resources.Requests) == 0 || len(c.Resources.Limits) == 0 {
		fail("resources: set requests and limits")
	}

	// args: agent --config FILE, FILE mounted from sluice-config.
	args := append(slices.Clone(c.Command), c.Args...)
	i := slices.Index(args, "--config")
	if !slices.Contains(args, "agent") || i < 0 || i+1 >= len(args) {
		fail("args %q: want agent --config FILE", args)
	} else {
		p := args[i+1]
		m, ok := mountFor(c, p)
		v, vok := volumeByName(spec, m.Name)
		switch {
		case !ok:
			fail("--config %s: no volumeMount covers it", p)
		case !vok || v.ConfigMap == nil || v.ConfigMap.Name != "sluice-config":
			fail("--config %s: mounted from volume %q, not the sluice-config ConfigMap", p, m.Name)
		case path.Clean(m.MountPath) == p && m.SubPath != "config.yaml":
			fail("--config %s: mounted with subPath %q, want config.yaml", p, m.SubPath)
		case path.Clean(m.MountPath) != p && strings.TrimPrefix(p, path.Clean(m.MountPath)+"/") != "config.yaml":
			fail("--config %s: the ConfigMap's key is config.yaml, mounted as %s/config.yaml", p, m.MountPath)
		}
	}

	// The admin API: admin.listen's port, on the node's address when
	// --admin-host names it (Prometheus scrapes it there), else on
	// admin.listen's address; the probes ask it there.
	if ap, err := netip.ParseAddrPort(cfg.Admin.Listen); err == nil {
		host := ap.Addr().String()
		if i := slices.Index(args, "--admin-host"); i >= 0 {
			host = ""
			if i+1 >= len(args) {
				fail("--admin-host without a value")
			} else if err := adminHostFromDownwardAPI(c, args[i+1]); err != nil {
				errs = append(errs, err)
			}
		}
		if err := probePort("livenessProbe", c.LivenessProbe, "/healthz", host, ap.Port()); err != nil {
			errs = append(errs, err)
		}
		if err := probePort("readinessProbe", c.ReadinessProbe, "/readyz", host, ap.Port()); err != nil {
			errs = append(errs, err)
		}
	}

	// ca.secret: read through the API (checkCAAccess); else ca.dir: the
	// sluice-ca Secret mounted, with ca.crt and ca.key, key not readable
	// by group or others.
	if cfg.CA.Secret != "" {
		errs = append(errs, checkCAAccess(objs, cfg.CA.Secret, o.head.Metadata.Namespace, spec)...)
	} else if m, ok := mountFor(c, path.Clean(cfg.CA.Dir)); !ok || path.Clean(m.MountPath) != path.Clean(cfg.CA.Dir) {
		fail("ca.dir %s: not mounted (want the sluice-ca Secret there)", cfg.CA.Dir)
	} else if v, _ := volumeByName(spec, m.Name); v.Secret == nil || v.Secret.SecretName != "sluice-ca" {
		fail("ca.dir %s: volume %q is not the sluice-ca Secret", cfg.CA.Dir, m.Name)
	} else {
		if v.Secret.DefaultMode == nil || *v.Secret.DefaultMode&0o077 != 0 {
			mode := "unset (0644)"
			if v.Secret.DefaultMode != nil {
				mode = fmt.Sprintf("%04o", *v.Secret.DefaultMode)
			}
			fail("volume %q: defaultMode %s: the agent refuses a ca.key group or others can read; use 256 (0400)", m.Name, mode)
		}
		if len(v.Secret.Items) > 0 {
			for _, want := range []string{"ca.crt", "ca.key"} {
				if !slices.Contains(v.Secret.Items, keyPath{Key: want, Path: want}) {
					fail("volume %q: items do not map %s to %s", m.Name, want, want)
				}
			}
		}
	}

	// policyFile: its directory from sluice-policy, without subPath (a
	// subPath mount never sees ConfigMap updates, so no reload).
	if cfg.PolicyFile != "" {
		p := path.Clean(cfg.PolicyFile)
		m, ok := mountFor(c, p)
		v, _ := volumeByName(spec, m.Name)
		switch {
		case !ok || path.Clean(m.MountPath) != path.Dir(p):
			fail("policyFile %s: its directory %s is not a volumeMount", p, path.Dir(p))
		case v.ConfigMap == nil || v.ConfigMap.Name != "sluice-policy":
			fail("policyFile %s: volume %q is not the sluice-policy ConfigMap", p, m.Name)
		case m.SubPath != "":
			fail("policyFile %s: mounted with subPath: ConfigMap updates would never reach the agent", p)
		case policyKeys != nil && len(v.ConfigMap.Items) == 0 && policyKeys[path.Base(p)] == "":
			fail("policyFile %s: sluice-policy has no key %s", p, path.Base(p))
		}
	}

	// bpffs: its parent from the node, propagated both ways so that the
	// pins are the node's and outlive the container.
	parent := path.Dir(path.Clean(cfg.Agent.BPFFS))
	if m, ok := mountFor(c, path.Clean(cfg.Agent.BPFFS)); !ok || path.Clean(m.MountPath) != parent {
		fail("agent.bpffs %s: its parent %s is not a volumeMount", cfg.Agent.BPFFS, parent)
	} else {
		v, _ := volumeByName(spec, m.Name)
		if v.HostPath == nil || path.Clean(v.HostPath.Path) != parent {
			fail("agent.bpffs %s: volume %q is not hostPath %s", cfg.Agent.BPFFS, m.Name, parent)
		}
		if m.MountPropagation != "Bidirectional" {
			fail("agent.bpffs %s: mountPropagation %q, want Bidirectional", cfg.Agent.BPFFS, m.MountPropagation)
		}
		if m.ReadOnly {
			fail("agent.bpffs %s: mounted read-only: the agent pins there", cfg.Agent.BPFFS)
		}
	}

	// The node's cgroup2 hierarchy, where agent.cgroups globs are resolved.
	if m, ok := mountFor(c, "/sys/fs/cgroup"); !ok || path.Clean(m.MountPath) != "/sys/fs/cgroup" {
		fail("/sys/fs/cgroup is not a volumeMount")
	} else if v, _ := volumeByName(spec, m.Name); v.HostPath == nil || path.Clean(v.HostPath.Path) != "/sys/fs/cgroup" {
		fail("/sys/fs/cgroup: volume %q is not hostPath /sys/fs/cgroup", m.Name)
	}
	return errs
}

// checkImages: every container that runs sluice (the DaemonSet's, the
// cleanup Job's) uses the DaemonSet's image and runs as root: the image
// (make image) runs as a non-root user by default, for sluice proxy and
// the tools, and the agent needs root on the node.
func checkImages(objs []*object) []error {
	var errs []error
	var image string
	for _, o := range objs {
		if o.head.Kind != "DaemonSet" && o.head.Kind != "Job" {
			continue
		}
		owner, err := decode[podTemplateOwner](o)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, c := range owner.Spec.Template.Spec.Containers {
			if !slices.Contains(append(slices.Clone(c.Command), c.Args...), "agent") {
				continue
			}
			if o.head.Kind == "DaemonSet" && o.head.Metadata.Name == "sluice-agent" {
				image = c.Image
			}
			if u := c.SecurityContext.RunAsUser; u == nil || *u != 0 {
				errs = append(errs, fmt.Errorf("%s container %s: securityContext.runAsUser is not 0: the image runs as a non-root user unless told, and sluice agent needs root", o.id(), c.Name))
			}
		}
	}
	if image == "" {
		return append(errs, errors.New("DaemonSet sluice-agent: no container runs sluice agent with an image"))
	}
	for _, o := range objs {
		if o.head.Kind != "Job" {
			continue
		}
		owner, _ := decode[podTemplateOwner](o)
		for _, c := range owner.Spec.Template.Spec.Containers {
			if c.Image != image {
				errs = append(errs, fmt.Errorf("%s container %s: image %q, the DaemonSet's is %q: use the same", o.id(), c.Name, c.Image, image))
			}
		}
	}
	return errs
}

// checkCAAccess: the agent can read and fill the Secret ca.secret names:
// its pod mounts the service account's token, and a RoleBinding in the
// Secret's namespace gives that account a role that may get and update
// the Secret and create Secrets there (create cannot be limited by name).
func checkCAAccess(objs []*object, secretRef, podNamespace string, spec podSpec) []error {
	ns, name, err := config.SplitSecret(secretRef)
	if err != nil {
		return []error{fmt.Errorf("ca.secret %q: %w", secretRef, err)}
	}
	sa := cmp.Or(spec.ServiceAccountName, "default")
	var errs []error
	fail := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("ca.secret %s: "+format, append([]any{secretRef}, args...)...))
	}
	if spec.AutomountServiceAccountToken != nil && !*spec.AutomountServiceAccountToken {
		fail("the DaemonSet sets automountServiceAccountToken: false, so the agent has no token for the API")
	}
	if o := find(objs, "ServiceAccount", sa); o != nil {
		if v, err := decode[struct {
			Automount *bool `yaml:"automountServiceAccountToken"`
		}](o); err == nil && v.Automount != nil && !*v.Automount && spec.AutomountServiceAccountToken == nil {
			fail("ServiceAccount %s sets automountServiceAccountToken: false, so the agent has no token for the API", sa)
		}
	}
	granted := map[string]bool{}
	for _, o := range objs {
		if o.head.Kind != "RoleBinding" || o.head.Metadata.Namespace != ns {
			continue
		}
		b, err := decode[roleBinding](o)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if !slices.Contains(b.Subjects, subject{Kind: "ServiceAccount", Name: sa, Namespace: podNamespace}) {
			continue
		}
		ro := find(objs, b.RoleRef.Kind, b.RoleRef.Name)
		if ro == nil {
			fail("%s binds %s %s, which is not in the manifests", o.id(), b.RoleRef.Kind, b.RoleRef.Name)
			continue
		}
		r, err := decode[role](ro)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, rule := range r.Rules {
			if !slices.Contains(rule.APIGroups, "") || !slices.Contains(rule.Resources, "secrets") {
				continue
			}
			for _, v := range rule.Verbs {
				byName := len(rule.ResourceNames) == 0 || slices.Contains(rule.ResourceNames, name)
				if v == "create" && len(rule.ResourceNames) > 0 {
					byName = false // RBAC never matches a create by name
				}
				if byName {
					granted[v] = true
				}
			}
		}
	}
	for _, v := range []string{"get", "create", "update"} {
		if !granted[v] && !granted["*"] {
			fail("no RoleBinding in namespace %s gives ServiceAccount %s/%s %s on Secret %s", ns, podNamespace, sa, v, name)
		}
	}
	return errs
}

// checkCASecret: the example Secret has the keys ca.LoadOrInit reads.
func checkCASecret(objs []*object) []error {
	o := find(objs, "Secret", "sluice-ca")
	if o == nil {
		return []error{errors.New("no example Secret sluice-ca")}
	}
	s, err := decode[secret](o)
	if err != nil {
		return []error{err}
	}
	var errs []error
	if s.Type != "Opaque" {
		errs = append(errs, fmt.Errorf("Secret sluice-ca: type %q, want Opaque", s.Type))
	}
	for _, k := range []string{"ca.crt", "ca.key"} {
		_, d := s.Data[k]
		_, sd := s.StringData[k]
		if !d && !sd {
			errs = append(errs, fmt.Errorf("Secret sluice-ca: no key %s", k))
		}
	}
	return errs
}

// checkWorkload: the example workload mounts the bundle ConfigMap and
// points the trust variables at files it mounts.
func checkWorkload(objs []*object) []error {
	if find(objs, "ConfigMap", "sluice-ca-bundle") == nil {
		return []error{errors.New("no example ConfigMap sluice-ca-bundle")}
	}
	d := find(objs, "Deployment", "mcp-example")
	if d == nil {
		return []error{errors.New("no example workload Deployment mcp-example")}
	}
	dep, err := decode[podTemplateOwner](d)
	if err != nil {
		return []error{err}
	}
	spec := dep.Spec.Template.Spec
	var errs []error
	bundle := false
	for _, v := range spec.Volumes {
		if v.ConfigMap != nil && v.ConfigMap.Name == "sluice-ca-bundle" {
			bundle = true
		}
	}
	if !bundle {
		errs = append(errs, fmt.Errorf("%s: no volume from ConfigMap sluice-ca-bundle", d.id()))
	}
	for _, c := range spec.Containers {
		for _, want := range []string{"SSL_CERT_FILE", "NODE_EXTRA_CA_CERTS", "REQUESTS_CA_BUNDLE"} {
			i := slices.IndexFunc(c.Env, func(e envVar) bool { return e.Name == want })
			if i < 0 {
				errs = append(errs, fmt.Errorf("%s container %s: no env %s", d.id(), c.Name, want))
				continue
			}
			if _, ok := mountFor(c, path.Clean(c.Env[i].Value)); !ok {
				errs = append(errs, fmt.Errorf("%s container %s: %s=%s is not under a volumeMount", d.id(), c.Name, want, c.Env[i].Value))
			}
		}
	}
	return errs
}

type mutatingWebhookConfiguration struct {
	Webhooks []struct {
		Name                    string   `yaml:"name"`
		AdmissionReviewVersions []string `yaml:"admissionReviewVersions"`
		SideEffects             string   `yaml:"sideEffects"`
		FailurePolicy           string   `yaml:"failurePolicy"`
		NamespaceSelector       struct {
			MatchLabels map[string]string `yaml:"matchLabels"`
		} `yaml:"namespaceSelector"`
		Rules []struct {
			APIGroups   []string `yaml:"apiGroups"`
			APIVersions []string `yaml:"apiVersions"`
			Operations  []string `yaml:"operations"`
			Resources   []string `yaml:"resources"`
		} `yaml:"rules"`
		ClientConfig struct {
			Service struct {
				Name      string `yaml:"name"`
				Namespace string `yaml:"namespace"`
				Path      string `yaml:"path"`
				Port      int    `yaml:"port"`
			} `yaml:"service"`
		} `yaml:"clientConfig"`
	} `yaml:"webhooks"`
}

type service struct {
	Metadata struct {
		Namespace string `yaml:"namespace"`
	} `yaml:"metadata"`
	Spec struct {
		Ports []struct {
			Port       int `yaml:"port"`
			TargetPort int `yaml:"targetPort"`
		} `yaml:"ports"`
	} `yaml:"spec"`
}

// checkWebhook: the CA injector's configuration reaches the webhook's
// Service, port and path, selects namespaces by the label the README
// names, admits pods on CREATE with v1 reviews and says what happens when
// it is down; the Deployment serves on the Service's target port with the
// certificate it mounts.
func checkWebhook(objs []*object) []error {
	mo := find(objs, "MutatingWebhookConfiguration", "sluice-ca-injector")
	if mo == nil {
		return []error{errors.New("no MutatingWebhookConfiguration sluice-ca-injector")}
	}
	mwc, err := decode[mutatingWebhookConfiguration](mo)
	if err != nil {
		return []error{err}
	}
	var errs []error
	fail := func(format string, a ...any) { errs = append(errs, fmt.Errorf(mo.id()+": "+format, a...)) }
	if len(mwc.Webhooks) != 1 {
		fail("%d webhooks, want 1", len(mwc.Webhooks))
		return errs
	}
	w := mwc.Webhooks[0]
	if !slices.Contains(w.AdmissionReviewVersions, "v1") {
		fail("admissionReviewVersions %v: the webhook speaks admission.k8s.io/v1", w.AdmissionReviewVersions)
	}
	if w.SideEffects != "None" {
		fail("sideEffects %q: want None", w.SideEffects)
	}
	if w.FailurePolicy != "Ignore" && w.FailurePolicy != "Fail" {
		fail("failurePolicy %q: set it (Ignore or Fail) and say why", w.FailurePolicy)
	}
	if got := w.NamespaceSelector.MatchLabels[webhook.NamespaceLabel]; got != "enabled" || len(w.NamespaceSelector.MatchLabels) != 1 {
		fail("namespaceSelector.matchLabels %v: want {%s: enabled}", w.NamespaceSelector.MatchLabels, webhook.NamespaceLabel)
	}
	pods := false
	for _, r := range w.Rules {
		if slices.Contains(r.Resources, "pods") && slices.Contains(r.Operations, "CREATE") && slices.Contains(r.APIGroups, "") && slices.Contains(r.APIVersions, "v1") {
			pods = true
		}
	}
	if !pods {
		fail("no rule for pods CREATE (apiGroups [\"\"], apiVersions [v1])")
	}
	svc := w.ClientConfig.Service
	if svc.Path != webhook.Path {
		fail("clientConfig.service.path %q: sluice webhook answers on %s", svc.Path, webhook.Path)
	}
	so := find(objs, "Service", svc.Name)
	if so == nil {
		fail("clientConfig.service.name %q: no such Service", svc.Name)
		return errs
	}
	s, err := decode[service](so)
	if err != nil {
		return append(errs, err)
	}
	if s.Metadata.Namespace != svc.Namespace {
		fail("clientConfig.service.namespace %q: the Service is in %q", svc.Namespace, s.Metadata.Namespace)
	}
	target := 0
	for _, p := range s.Spec.Ports {
		if p.Port == svc.Port {
			target = p.TargetPort
		}
	}
	if target == 0 {
		fail("clientConfig.service.port %d: the Service has no such port", svc.Port)
		return errs
	}
	do := find(objs, "Deployment", "sluice-webhook")
	if do == nil {
		return append(errs, errors.New("no Deployment sluice-webhook"))
	}
	dep, err := decode[podTemplateOwner](do)
	if err != nil {
		return append(errs, err)
	}
	spec := dep.Spec.Template.Spec
	if len(spec.Containers) != 1 {
		return append(errs, fmt.Errorf("%s: %d containers, want 1", do.id(), len(spec.Containers)))
	}
	c := spec.Containers[0]
	if len(c.Args) == 0 || c.Args[0] != "webhook" {
		errs = append(errs, fmt.Errorf("%s: args %v: want sluice webhook", do.id(), c.Args))
	}
	flag := func(name string) string {
		i := slices.Index(c.Args, name)
		if i < 0 || i+1 >= len(c.Args) {
			return ""
		}
		return c.Args[i+1]
	}
	if l := flag("--listen"); l != ":"+strconv.Itoa(target) {
		errs = append(errs, fmt.Errorf("%s: --listen %q: the Service's targetPort is %d", do.id(), l, target))
	}
	for _, f := range []string{"--tls-cert", "--tls-key"} {
		p := flag(f)
		m, ok := mountFor(c, p)
		if !ok {
			errs = append(errs, fmt.Errorf("%s: %s %q: no volumeMount covers it", do.id(), f, p))
			continue
		}
		if v, ok := volumeByName(spec, m.Name); !ok || v.Secret == nil {
			errs = append(errs, fmt.Errorf("%s: %s %q: its volume %q is not a Secret", do.id(), f, p, m.Name))
		}
	}
	return errs
}

func TestManifests(t *testing.T) {
	if err := check(readManifests(t)); err != nil {
		t.Errorf("deploy/kubernetes:\n%v", err)
	}
}

// TestManifestsCatchMistakes breaks the real manifests one way at a time
// and expects the check to name the problem: a check that cannot fail
// proves nothing.
func TestManifestsCatchMistakes(t *testing.T) {
	good := readManifests(t)
	for _, tc := range []struct {
		name, file, old, new string
		want                 string // in the error
	}{
		{"config key typo", "configmap-config.yaml", "      failMode: closed", "      failMod: closed", "field failMod not found"},
		{"config bad value", "configmap-config.yaml", "      failMode: closed", "      failMode: shut", `agent.failMode "shut"`},
		{"admin on every address", "configmap-config.yaml", "listen: 127.0.0.1:9090", "listen: 0.0.0.0:9090", "admin.listen"},
		{"probe port differs from admin.listen", "configmap-config.yaml", "listen: 127.0.0.1:9090", "listen: 127.0.0.1:9091", "livenessProbe port 9090: admin.listen's port is 9091"},
		{"ca.dir not mounted", "configmap-config.yaml", "secret: sluice-system/sluice-ca", "dir: /var/lib/sluice/ca", "ca.dir /var/lib/sluice/ca: not mounted"},
		{"ca.secret and ca.dir", "configmap-config.yaml", "secret: sluice-system/sluice-ca", "secret: sluice-system/sluice-ca\n      dir: /var/lib/sluice/ca", "are both set: choose one"},
		{"ca.secret renamed", "configmap-config.yaml", "secret: sluice-system/sluice-ca", "secret: sluice-system/sluice-ca2", "gives ServiceAccount sluice-system/sluice-agent get on Secret sluice-ca2"},
		{"ca.secret elsewhere", "configmap-config.yaml", "secret: sluice-system/sluice-ca", "secret: default/sluice-ca", "no RoleBinding in namespace default"},
		{"ca.secret not updatable", "rbac.yaml", `verbs: ["get", "update"]`, `verbs: ["get"]`, "gives ServiceAccount sluice-system/sluice-agent update on Secret sluice-ca"},
		{"ca.secret create by name", "rbac.yaml", "    resources: [\"secrets\"]\n    verbs: [\"create\"]", "    resources: [\"secrets\"]\n    resourceNames: [\"sluice-ca\"]\n    verbs: [\"create\"]", "create on Secret sluice-ca"},
		{"ca.secret without a token", "daemonset.yaml", "      serviceAccountName: sluice-agent\n", "      serviceAccountName: sluice-agent\n      automountServiceAccountToken: false\n", "no token for the API"},
		{"policy file moved", "configmap-config.yaml", "policyFile: /etc/sluice/policy/policy.yaml", "policyFile: /etc/sluice/rules/policy.yaml", "its directory /etc/sluice/rules is not a volumeMount"},
		{"policy key renamed", "configmap-config.yaml", "policyFile: /etc/sluice/policy/policy.yaml", "policyFile: /etc/sluice/policy/rules.yaml", `no data key "rules.yaml"`},
		{"bpffs elsewhere", "configmap-config.yaml", "bpffs: /sys/fs/bpf/sluice", "bpffs: /run/bpf/sluice", "agent.bpffs /run/bpf/sluice: its parent /run/bpf is not a volumeMount"},
		{"policy typo", "configmap-policy.yaml", "    mode: audit", "    mdoe: audit", "mdoe"},
		{"policy enforce", "configmap-policy.yaml", "    mode: audit", "    mode: enforce", `mode "enforce": start in audit mode`},
		{"no hostNetwork", "daemonset.yaml", "hostNetwork: true", "hostNetwork: false", "hostNetwork is not true"},
		{"no hostPID", "daemonset.yaml", "hostPID: true", "hostPID: false", "hostPID is not true"},
		{"probe host on loopback", "daemonset.yaml", "              port: 9090\n              path: /healthz", "              host: 127.0.0.1\n              port: 9090\n              path: /healthz", `livenessProbe host "127.0.0.1": with --admin-host the admin API is on the node's address`},
		{"no --admin-host: probes on admin.listen", "daemonset.yaml", `, "--admin-host", "$(HOST_IP)"`, "", `livenessProbe host "": admin.listen is on 127.0.0.1`},
		{"admin host not the node's", "daemonset.yaml", "fieldPath: status.hostIP", "fieldPath: status.podIPs", "env HOST_IP: want valueFrom.fieldRef.fieldPath status.hostIP"},
		{"admin host literal", "daemonset.yaml", `"--admin-host", "$(HOST_IP)"`, `"--admin-host", "10.0.0.1"`, `--admin-host "10.0.0.1": want $(HOST_IP)`},
		{"agent as the image's user", "daemonset.yaml", "            runAsUser: 0\n", "", "DaemonSet/sluice-agent container agent: securityContext.runAsUser is not 0"},
		{"cleanup as the image's user", "examples/cleanup-job.yaml", "            runAsUser: 0\n", "", "Job/sluice-cleanup-NODE_NAME container cleanup: securityContext.runAsUser is not 0"},
		{"cleanup image differs", "examples/cleanup-job.yaml", "image: ghcr.io/sluicehq/sluice:latest", "image: sluice:dev", `image "sluice:dev", the DaemonSet's is`},
		{"readiness path", "daemonset.yaml", "path: /readyz", "path: /healthz", `readinessProbe path "/healthz"`},
		{"bpffs propagation", "daemonset.yaml", "              mountPropagation: Bidirectional", "              mountPropagation: HostToContainer", `mountPropagation "HostToContainer"`},
		{"config path", "daemonset.yaml", `"--config", "/etc/sluice/config.yaml"`, `"--config", "/etc/sluice.yaml"`, "--config /etc/sluice.yaml: no volumeMount covers it"},
		{"policy subPath", "daemonset.yaml", "mountPath: /etc/sluice/policy\n", "mountPath: /etc/sluice/policy\n              subPath: policy.yaml\n", "mounted with subPath"},
		{"unlisted resource", "extra.yaml", "", "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: extra\n", "extra.yaml is not listed"},
		{"no name", "serviceaccount.yaml", "  name: sluice-agent\n", "", "metadata.name is required"},
		{"workload env", "examples/workload-deployment.yaml", "NODE_EXTRA_CA_CERTS", "NODE_EXTRA_CERTS", "no env NODE_EXTRA_CA_CERTS"},
		{"secret key", "examples/ca-secret.yaml", "  ca.key: |", "  tls.key: |", "Secret sluice-ca: no key ca.key"},
		{"webhook namespace label", "webhook/webhook.yaml", "sluice.dev/inject-ca: enabled", "sluice.dev/inject: enabled", "namespaceSelector.matchLabels"},
		{"webhook failurePolicy unset", "webhook/webhook.yaml", "    failurePolicy: Ignore\n", "", `failurePolicy ""`},
		{"webhook path", "webhook/webhook.yaml", "path: /mutate", "path: /mutating", `clientConfig.service.path "/mutating"`},
		{"webhook service port", "webhook/webhook.yaml", "        port: 443", "        port: 8443", "clientConfig.service.port 8443"},
		{"webhook listen port", "webhook/webhook.yaml", `"--listen", ":8443"`, `"--listen", ":9443"`, `--listen ":9443"`},
		{"webhook cert not mounted", "webhook/webhook.yaml", "mountPath: /etc/sluice/webhook", "mountPath: /etc/webhook", `--tls-cert "/etc/sluice/webhook/tls.crt": no volumeMount`},
		{"webhook v1beta1 only", "webhook/webhook.yaml", `admissionReviewVersions: ["v1"]`, `admissionReviewVersions: ["v1beta1"]`, "admissionReviewVersions"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			files := maps.Clone(good)
			if tc.old == "" {
				files[tc.file] = []byte(tc.new)
			} else {
				b, ok := files[tc.file]
				if !ok || !bytes.Contains(b, []byte(tc.old)) {
					t.Fatalf("%s does not contain %q: update this test", tc.file, tc.old)
				}
				files[tc.file] = bytes.Replace(b, []byte(tc.old), []byte(tc.new), 1)
			}
			err := check(files)
			if err == nil {
				t.Fatalf("check accepted the broken manifests")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error does not mention %q:\n%v", tc.want, err)
			}
		})
	}
}

// The CA's other form, documented in deploy/kubernetes/README.md ("The
// CA"): ca.dir with the sluice-ca Secret mounted there, read-only, 0400.
// The check accepts it, and names what is wrong in a broken one.
func TestManifestsCADirForm(t *testing.T) {
	edit := func(t *testing.T, files map[string][]byte, file, old, new string) {
		t.Helper()
		if !bytes.Contains(files[file], []byte(old)) {
			t.Fatalf("%s does not contain %q: update this test", file, old)
		}
		files[file] = bytes.Replace(files[file], []byte(old), []byte(new), 1)
	}
	dirForm := func(t *testing.T, mode string) map[string][]byte {
		files := maps.Clone(readManifests(t))
		edit(t, files, "configmap-config.yaml", "secret: sluice-system/sluice-ca", "dir: /var/lib/sluice/ca")
		edit(t, files, "daemonset.yaml", "            - name: bpffs\n              mountPath:",
			"            - name: ca\n              mountPath: /var/lib/sluice/ca\n              readOnly: true\n            - name: bpffs\n              mountPath:")
		edit(t, files, "daemonset.yaml", "        - name: bpffs\n          hostPath:",
			"        - name: ca\n          secret:\n            secretName: sluice-ca\n            defaultMode: "+mode+"\n        - name: bpffs\n          hostPath:")
		return files
	}
	if err := check(dirForm(t, "256")); err != nil {
		t.Fatalf("the ca.dir form, as documented:\n%v", err)
	}
	for _, tc := range []struct {
		name string
		mode string
		old  string // in daemonset.yaml, replaced by new
		new  string
		want string
	}{
		{"key readable", "0644", "", "", "defaultMode 0644"},
		{"mode unset", "256", "            defaultMode: 256\n", "", "defaultMode unset (0644)"},
		{"another Secret", "256", "secretName: sluice-ca", "secretName: sluice-tls", `volume "ca" is not the sluice-ca Secret`},
		{"not mounted", "256", "              mountPath: /var/lib/sluice/ca\n", "              mountPath: /var/lib/sluice/ca2\n", "ca.dir /var/lib/sluice/ca: not mounted"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			files := dirForm(t, tc.mode)
			if tc.old != "" {
				edit(t, files, "daemonset.yaml", tc.old, tc.new)
			}
			err := check(files)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want it to mention %q", err, tc.want)
			}
		})
	}
}
