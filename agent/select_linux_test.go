package agent

import (
	"context"
	"strings"
	"testing"

	"github.com/sluicehq/sluice/config"
	"github.com/sluicehq/sluice/workload"
)

// fakeMeta names containers and pods as a runtime would.
type fakeMeta struct {
	containers map[string]workload.Identity // by container id
	pods       map[string]workload.Identity // by pod uid
}

func (f fakeMeta) Enrich(_ context.Context, id *workload.Identity) {
	if m, ok := f.containers[id.ContainerID]; ok {
		id.Container, id.Image, id.Namespace, id.Pod, id.Labels = m.Container, m.Image, m.Namespace, m.Pod, m.Labels
		return
	}
	if m, ok := f.pods[id.PodUID]; ok {
		id.Namespace, id.Pod, id.Labels = m.Namespace, m.Pod, m.Labels
	}
}

func (fakeMeta) OnChange(func(string, string)) {}

// selectedByMeta: agent.select picks a container's cgroup by any entry
// and a pod's cgroup by an entry that names no container fields; a
// cgroup that names neither is never selected by metadata.
func TestSelectedByMeta(t *testing.T) {
	cid := strings.Repeat("a", 64)
	other := strings.Repeat("b", 64)
	uid := "0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b"
	us := strings.ReplaceAll(uid, "-", "_")
	meta := fakeMeta{
		containers: map[string]workload.Identity{
			cid:   {Container: "api", Image: "registry.example.com/shop/api:1", Namespace: "shop", Pod: "web-0", Labels: map[string]string{"app": "web"}},
			other: {Container: "db", Image: "postgres:16", Labels: map[string]string{"team": "data"}},
		},
		pods: map[string]workload.Identity{uid: {Namespace: "shop", Pod: "web-0", Labels: map[string]string{"app": "web"}}},
	}
	podSlice := "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + us + ".slice"
	tests := []struct {
		name string
		sel  []config.Select
		rel  string
		want bool
	}{
		{"namespace selects the pod's cgroup", []config.Select{{Namespaces: []string{"shop"}}}, podSlice, true},
		{"and its containers", []config.Select{{Namespaces: []string{"shop"}}}, podSlice + "/cri-containerd-" + cid + ".scope", true},
		{"pod labels", []config.Select{{Labels: map[string]string{"app": "web"}}}, podSlice, true},
		{"a container name does not select the pod", []config.Select{{Containers: []string{"api"}}}, podSlice, false},
		{"but its container", []config.Select{{Containers: []string{"api"}}}, podSlice + "/cri-containerd-" + cid + ".scope", true},
		{"docker container by image", []config.Select{{Images: []string{"postgres:*"}}}, "/docker/" + other, true},
		{"docker container by label", []config.Select{{Labels: map[string]string{"team": "data"}}}, "/system.slice/docker-" + other + ".scope", true},
		{"entries are ORed", []config.Select{{Namespaces: []string{"prod"}}, {Containers: []string{"db"}}}, "/docker/" + other, true},
		{"fields are ANDed", []config.Select{{Containers: []string{"db"}, Namespaces: []string{"shop"}}}, "/docker/" + other, false},
		{"an unknown container", []config.Select{{Namespaces: []string{"*"}}}, "/docker/" + strings.Repeat("c", 64), false},
		{"not a container", []config.Select{{Namespaces: []string{"*"}}}, "/user.slice/session-1.scope", false},
		{"no agent.select", nil, "/docker/" + other, false},
	}
	for _, tt := range tests {
		a := &Agent{sels: compileSelect(tt.sel), opts: Options{Metadata: meta}, ctx: context.Background()}
		if _, got := a.selectedByMeta(tt.rel); got != tt.want {
			t.Errorf("%s: selectedByMeta(%s) = %v, want %v", tt.name, tt.rel, got, tt.want)
		}
	}
}
