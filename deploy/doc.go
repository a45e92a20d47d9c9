// Package deploy holds what runs Sluice outside a developer's machine: the
// Kubernetes manifests for the node agent (kubernetes/, applied with
// `kubectl apply -k deploy/kubernetes`) and the Grafana dashboard. It has
// no code of its own; its tests check that the manifests agree with the
// configuration and policy the binary accepts, so a renamed config key or
// a moved mount fails `go test` instead of a node.
package deploy
