package containers

import (
	"context"
	"testing"

	"github.com/sluicehq/sluice/workload"
)

// BenchmarkEnrich is the per-connection cost of naming a known pod's
// container (a cache hit, pod labels over container labels).
func BenchmarkEnrich(b *testing.B) {
	c := New(Options{})
	c.PutContainer(Info{ID: apiID, Name: "api", Image: "registry.example.com/shop/api:1", Labels: kubeletLabels("web-0", "shop", podUID, "api")})
	c.PutPod(Pod{UID: podUID, Name: "web-0", Namespace: "shop", Labels: map[string]string{"app": "web", "tier": "front"}})
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		id := workload.Identity{ContainerID: apiID, PodUID: podUID}
		c.Enrich(ctx, &id)
		if id.Pod != "web-0" {
			b.Fatal(id)
		}
	}
}
