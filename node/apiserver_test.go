package node

import (
	"bytes"
	"context"
	"log/slog"
	"net/http"
	"strings"
	"testing"

	"github.com/sluicehq/sluice/ca"
	"github.com/sluicehq/sluice/kubeapi/kubeapitest"
)

// Against a real API server (kubeapitest), as an admin: the first start
// with ca.secret creates the CA in the Secret, labelled as Sluice's, and
// says so with its fingerprint; the next start loads the same CA.
func TestRealAPILoadSharedCA(t *testing.T) {
	k := kubeapitest.Real(t)
	ns := k.Namespace(t, nil)
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	a, err := loadSharedCA(context.Background(), k.Admin, ns, "sluice-ca", ca.Options{}, log)
	if err != nil {
		t.Fatal(err)
	}
	want := `msg="ca created in the secret" secret=` + ns + `/sluice-ca fingerprint=` + a.Fingerprint()
	if !strings.Contains(logs.String(), want) {
		t.Errorf("log %q lacks %q", logs.String(), want)
	}
	obj := k.Do(t, http.MethodGet, "/api/v1/namespaces/"+ns+"/secrets/sluice-ca", nil)
	if l := obj["metadata"].(map[string]any)["labels"].(map[string]any); l["app.kubernetes.io/name"] != "sluice" || l["app.kubernetes.io/component"] != "ca" {
		t.Errorf("labels %v", l)
	}
	b, err := loadSharedCA(context.Background(), k.Admin, ns, "sluice-ca", ca.Options{}, log)
	if err != nil || b.Fingerprint() != a.Fingerprint() {
		t.Fatalf("second start: %v", err)
	}
	if !strings.Contains(logs.String(), `msg="ca loaded from the secret"`) {
		t.Errorf("log %q: no load", logs.String())
	}
}
