package main

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/ca"
	"github.com/sluicehq/sluice/config"
	"github.com/sluicehq/sluice/launch"
	"github.com/sluicehq/sluice/webhook"
)

func init() {
	register("webhook", "the Kubernetes admission webhook that gives pods the CA (serve | bundle)", runWebhook)
}

func runWebhook(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "bundle" {
		return runWebhookBundle(args[1:], stdout, stderr)
	}
	if len(args) > 0 && args[0] == "serve" {
		args = args[1:]
	}
	fs := flag.NewFlagSet("sluice webhook", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", ":8443", "serve HTTPS on `ADDR` (the Service's targetPort)")
	cert := fs.String("tls-cert", "/etc/sluice/webhook/tls.crt", "the serving certificate (PEM) `FILE`; its names must include the Service's DNS name")
	key := fs.String("tls-key", "/etc/sluice/webhook/tls.key", "the serving key (PEM) `FILE`")
	cm := fs.String("configmap", webhook.DefaultConfigMap, "the `NAME` of the bundle ConfigMap in each pod's namespace (sluice webhook bundle)")
	mount := fs.String("mount-path", webhook.DefaultMountPath, "where the bundle is mounted in each container (`PATH`)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: sluice webhook [serve] [--listen ADDR] [--tls-cert FILE] [--tls-key FILE] [--configmap NAME] [--mount-path PATH]\n       sluice webhook bundle --namespace NS [--dir DIR] [--name NAME]")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return 0
		}
		return 2
	}
	o := webhook.Options{ConfigMap: *cm, MountPath: *mount}
	if err := o.Validate(); err != nil {
		fmt.Fprintf(stderr, "sluice webhook: %v\n", err)
		return 2
	}
	o.Log = slog.New(slog.NewJSONHandler(stderr, nil)).With(audit.KeyComponent, audit.ComponentWebhook)
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintf(stderr, "sluice webhook: listen on %s: %v\n", *listen, err)
		return 1
	}
	if err := webhook.Serve(ctx, ln, *cert, *key, o); err != nil {
		fmt.Fprintf(stderr, "sluice webhook: %v\n", err)
		return 1
	}
	return 0
}

// runWebhookBundle prints the bundle ConfigMap of one namespace (JSON,
// for kubectl apply -f -): the system roots and the Sluice CA as PEM, and
// the Java trust store.
func runWebhookBundle(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("sluice webhook bundle", flag.ContinueOnError)
	fs.SetOutput(stderr)
	def := config.Default().CA.Dir
	if d := os.Getenv(caDirEnv); d != "" {
		def = d
	}
	dir := fs.String("dir", def, "the CA directory (ca.crt is read, never the key); env "+caDirEnv)
	ns := fs.String("namespace", "", "the `NAMESPACE` whose pods the webhook patches (required)")
	name := fs.String("name", webhook.DefaultConfigMap, "the ConfigMap's `NAME` (sluice webhook --configmap)")
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return 0
		}
		return 2
	}
	if *ns == "" || fs.NArg() > 0 {
		fmt.Fprintln(stderr, "usage: sluice webhook bundle --namespace NS [--dir DIR] [--name NAME] | kubectl apply -f -")
		return 2
	}
	c, err := ca.ReadCertificate(*dir)
	if err != nil {
		fmt.Fprintf(stderr, "sluice webhook bundle: %v\n", err)
		return 1
	}
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	store, err := launch.JavaTrustStore(caPEM)
	if err != nil {
		fmt.Fprintf(stderr, "sluice webhook bundle: %v\n", err)
		return 1
	}
	out, err := json.MarshalIndent(webhook.BundleConfigMap(*name, *ns, launch.BundlePEM(caPEM), store), "", "  ")
	if err != nil {
		fmt.Fprintf(stderr, "sluice webhook bundle: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "%s\n", out)
	return 0
}
