// Package kubeapi is Sluice's one client of the Kubernetes API: where the
// API server is from inside a pod, the service account's bearer token on
// every request, and the API's refusals as Go errors. What is asked of
// the API (pods, the CA's Secret) belongs to the packages that ask.
package kubeapi

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// ServiceAccountDir is where Kubernetes mounts a pod's service-account
// token and the cluster's CA.
const ServiceAccountDir = "/var/run/secrets/kubernetes.io/serviceaccount"

// Client sends requests to one API server.
type Client struct {
	// Server is the API server's base URL, e.g. https://10.96.0.1:443.
	Server string
	// TokenFile is read before every request (projected tokens rotate);
	// empty: no token.
	TokenFile string
	hc        *http.Client
}

// InCluster returns the client for the API server the pod's environment
// names (KUBERNETES_SERVICE_HOST and _PORT), trusting the service
// account's CA. ok is false outside a cluster: no such environment, or no
// token mounted.
func InCluster() (c *Client, ok bool, err error) {
	host, port := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT")
	token := filepath.Join(ServiceAccountDir, "token")
	if host == "" || port == "" {
		return nil, false, nil
	}
	if _, err := os.Stat(token); err != nil {
		return nil, false, nil
	}
	pem, err := os.ReadFile(filepath.Join(ServiceAccountDir, "ca.crt"))
	if err != nil {
		return nil, true, fmt.Errorf("kubernetes api: read service account ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, true, fmt.Errorf("kubernetes api: %s/ca.crt holds no certificate", ServiceAccountDir)
	}
	return New("https://"+net.JoinHostPort(host, port), token, &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}), true, nil
}

// New returns the client for the API server at server, authenticating
// with the token in tokenFile (none when empty) over TLS configured by tc.
func New(server, tokenFile string, tc *tls.Config) *Client {
	tr := &http.Transport{TLSClientConfig: tc, Proxy: nil, MaxIdleConns: 2, TLSHandshakeTimeout: 10 * time.Second}
	return &Client{Server: strings.TrimSuffix(server, "/"), TokenFile: tokenFile, hc: &http.Client{Transport: tr}}
}

// Do sends method to path (e.g. /api/v1/pods) with query, and body as
// JSON when it is not nil. An answer other than 2xx is returned as a
// *StatusError, its body read and closed.
func (c *Client) Do(ctx context.Context, method, path string, query url.Values, body []byte) (*http.Response, error) {
	u := c.Server + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return nil, fmt.Errorf("kubernetes api: %s %s: %w", method, path, err)
	}
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.TokenFile != "" {
		tok, err := os.ReadFile(c.TokenFile)
		if err != nil {
			return nil, fmt.Errorf("kubernetes api: read token: %w", err)
		}
		req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("kubernetes api: %s %s: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		defer resp.Body.Close()
		return nil, statusError(method, path, resp)
	}
	return resp, nil
}

// StatusError is an answer of the API other than 2xx: its HTTP status,
// and the reason and message of the Status object it carried (when it
// was one).
type StatusError struct {
	Method, Path string
	Code         int
	Status       string // e.g. "409 Conflict"
	Reason       string // e.g. "AlreadyExists", "Conflict", "NotFound", "Forbidden"; may be empty
	Message      string
}

func (e *StatusError) Error() string {
	msg := e.Message
	if msg == "" {
		msg = e.Reason
	}
	if msg == "" {
		return fmt.Sprintf("kubernetes api: %s %s: %s", e.Method, e.Path, e.Status)
	}
	return fmt.Sprintf("kubernetes api: %s %s: %s: %s", e.Method, e.Path, e.Status, msg)
}

// StatusCode is the HTTP status of the API's answer that err (from Do,
// or what wraps it) carries; 0 when the API gave none.
func StatusCode(err error) int {
	var se *StatusError
	if errors.As(err, &se) {
		return se.Code
	}
	return 0
}

// Transient reports whether err, from Do or what wraps it, may pass if
// the request is sent again: the API server could not be reached, or
// answered 429 Too Many Requests or a 5xx. A refusal (401, 403), an
// answer about the object (404, 409) or a request it could not read
// (400, 422) is not, nor a server whose certificate does not verify.
func Transient(err error) bool {
	if err == nil {
		return false
	}
	if code := StatusCode(err); code != 0 {
		return code == http.StatusTooManyRequests || code >= 500
	}
	var cv *tls.CertificateVerificationError
	if errors.As(err, &cv) {
		return false // the server is not the one trusted: again is no better
	}
	var ue *url.Error
	return errors.As(err, &ue) // the request never got an answer
}

// statusError reads the Status object of a refusal (its first 64 KiB; a
// body that is not one becomes the message, cut to 512 bytes).
func statusError(method, path string, resp *http.Response) *StatusError {
	e := &StatusError{Method: method, Path: path, Code: resp.StatusCode, Status: resp.Status}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var st struct {
		Kind    string `json:"kind"`
		Reason  string `json:"reason"`
		Message string `json:"message"`
	}
	if json.Unmarshal(b, &st) == nil && st.Kind == "Status" {
		e.Reason, e.Message = st.Reason, st.Message
		return e
	}
	e.Message = strings.TrimSpace(string(b[:min(len(b), 512)]))
	return e
}
