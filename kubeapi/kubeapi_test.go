package kubeapi_test

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/sluicehq/sluice/kubeapi"
)

// Transient says which failures a retry may get past: the API server
// out of reach, busy or failing; not a refusal, an answer about the
// object, or a server that is not the one trusted.
func TestTransient(t *testing.T) {
	code := func(c int) error {
		return &kubeapi.StatusError{Method: "GET", Path: "/api", Code: c, Status: http.StatusText(c)}
	}
	ctx := context.Background()
	// Nothing listens on a port just closed.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	_, refused := kubeapi.New("https://"+addr, "", &tls.Config{}).Do(ctx, http.MethodGet, "/api", nil, nil)
	// A server whose certificate the client does not trust.
	srv := httptest.NewTLSServer(http.NotFoundHandler())
	defer srv.Close()
	_, untrusted := kubeapi.New(srv.URL, "", &tls.Config{}).Do(ctx, http.MethodGet, "/api", nil, nil)

	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"nil", nil, false},
		{"503", code(http.StatusServiceUnavailable), true},
		{"500", code(http.StatusInternalServerError), true},
		{"429", code(http.StatusTooManyRequests), true},
		{"403", code(http.StatusForbidden), false},
		{"401", code(http.StatusUnauthorized), false},
		{"404", code(http.StatusNotFound), false},
		{"409", code(http.StatusConflict), false},
		{"wrapped 503", errors.Join(errors.New("load ca"), code(http.StatusServiceUnavailable)), true},
		{"connection refused", refused, true},
		{"untrusted server", untrusted, false},
		{"other", errors.New("decode secret: unexpected EOF"), false},
	} {
		if got := kubeapi.Transient(tc.err); got != tc.want {
			t.Errorf("%s (%v): Transient %v, want %v", tc.name, tc.err, got, tc.want)
		}
	}
}
