package audit_test

import (
	"net/http"
	"testing"

	"github.com/sluicehq/sluice/audit"
)

func TestRedactAllowlist(t *testing.T) {
	secrets := []string{
		"Authorization", "Proxy-Authorization", "Cookie", "Set-Cookie", "X-Api-Key",
		"Api-Key", "X-Goog-Api-Key", "X-Auth-Token", "Private-Token",
		"X-Amz-Security-Token", "Ocp-Apim-Subscription-Key", "X-Unknown-Vendor-Header",
		"Referer",
		"Mcp-Session-Id", // a bearer of the session on servers that trust it alone
	}
	clear := map[string]string{
		"Accept":               "application/json, text/event-stream",
		"Content-Type":         "application/json",
		"Content-Length":       "42",
		"User-Agent":           "anthropic-python/0.40",
		"Host":                 "api.example",
		"Mcp-Protocol-Version": "2025-06-18",
		"Traceparent":          "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
		"X-Request-Id":         "r-1",
	}
	h := http.Header{}
	for _, k := range secrets {
		h.Set(k, "s3cret-"+k)
	}
	for k, v := range clear {
		h.Set(k, v)
	}
	h["x-lowercase-token"] = []string{"s3cret-raw"} // not canonicalised by the caller
	h.Add("Accept-Language", "en")
	h.Add("Accept-Language", "fr")

	got := audit.Redact(h, []string{"x-request-id"})

	if len(got) != len(h) {
		t.Errorf("got %d names, want %d: %v", len(got), len(h), got)
	}
	for _, k := range append(secrets, "X-Lowercase-Token", "X-Request-Id") {
		if v, ok := got[k]; !ok || v != audit.Redacted {
			t.Errorf("%s = %q (present %v), want %q", k, v, ok, audit.Redacted)
		}
	}
	for k, v := range clear {
		if k == "X-Request-Id" {
			continue // redacted through extra even though allowlisted
		}
		if got[k] != v {
			t.Errorf("%s = %q, want %q", k, got[k], v)
		}
	}
	if got["Accept-Language"] != "en, fr" {
		t.Errorf("Accept-Language = %q, want %q", got["Accept-Language"], "en, fr")
	}
	if audit.Redact(nil, nil) != nil {
		t.Error("Redact(nil) is not nil")
	}
}
