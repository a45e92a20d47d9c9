package main

import (
	"context"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sluicehq/sluice/ca"
	"github.com/sluicehq/sluice/config"
)

// caDirEnv overrides the default CA directory; --dir overrides both.
const caDirEnv = "SLUICE_CA_DIR"

func init() {
	register("ca", "create, show and export the CA (init, show, export)", runCA)
}

func caUsage(w io.Writer) {
	fmt.Fprintf(w, `usage:
  sluice ca init   [--dir DIR] [--key-type ecdsa|rsa]   create a new CA
  sluice ca show   [--dir DIR]                          subject, fingerprint, validity, key type
  sluice ca export [--dir DIR] [--out FILE] [--format pem|p12|jks] [--with-system-roots] [--password PW]
                                                        the trust store workloads use (stdout by default)

Formats: pem, PEM certificates (OpenSSL, Go, curl, Python, Node.js, AWS
SDKs); p12, a PKCS#12 trust store (Java 12+: -Djavax.net.ssl.trustStoreType=PKCS12;
OpenSSL); jks, that PKCS#12 trust store in the legacy encoding every Java 8+
reads, also as -storetype JKS (not the proprietary JKS encoding). The
PKCS#12 password defaults to %q. --with-system-roots adds the system
roots, for clients that trust only the file they are given.

DIR defaults to $%s, else %s.
`, ca.TrustStorePassword, caDirEnv, config.Default().CA.Dir)
}

func runCA(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		caUsage(stderr)
		return 2
	}
	switch args[0] {
	case "init":
		return runCAInit(args[1:], stdout, stderr)
	case "show":
		return runCAShow(args[1:], stdout, stderr)
	case "export":
		return runCAExport(args[1:], stdout, stderr)
	case "-h", "--help", "help":
		caUsage(stdout)
		return 0
	default:
		fmt.Fprintf(stderr, "sluice ca: unknown subcommand %q\n\n", args[0])
		caUsage(stderr)
		return 2
	}
}

// caFlags makes the flag set shared by the ca subcommands and returns the
// --dir value's pointer.
func caFlags(name string, stderr io.Writer) (*flag.FlagSet, *string) {
	fs := flag.NewFlagSet("sluice ca "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	def := config.Default().CA.Dir
	if d := os.Getenv(caDirEnv); d != "" {
		def = d
	}
	dir := fs.String("dir", def, "the CA directory (ca.crt, ca.key); env "+caDirEnv)
	return fs, dir
}

// parseCA parses args and reports the exit code to return, if any.
func parseCA(fs *flag.FlagSet, args []string, stderr io.Writer) (int, bool) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0, true
		}
		return 2, true
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "%s: unexpected argument %q\n", fs.Name(), fs.Arg(0))
		return 2, true
	}
	return 0, false
}

func runCAInit(args []string, stdout, stderr io.Writer) int {
	fs, dir := caFlags("init", stderr)
	keyType := fs.String("key-type", config.Default().CA.KeyType, `key of the new CA: "ecdsa" (P-256) or "rsa" (2048)`)
	if code, done := parseCA(fs, args, stderr); done {
		return code
	}
	if *keyType != ca.KeyECDSA && *keyType != ca.KeyRSA {
		fmt.Fprintf(stderr, "sluice ca init: --key-type %q: must be %q or %q\n", *keyType, ca.KeyECDSA, ca.KeyRSA)
		return 2
	}
	a, err := ca.Init(*dir, ca.Options{KeyType: *keyType})
	if err != nil {
		fmt.Fprintf(stderr, "sluice ca init: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "created CA in %s\n", *dir)
	writeCAInfo(stdout, *dir, a.Certificate(), a.Fingerprint())
	return 0
}

func runCAShow(args []string, stdout, stderr io.Writer) int {
	fs, dir := caFlags("show", stderr)
	if code, done := parseCA(fs, args, stderr); done {
		return code
	}
	c, err := ca.ReadCertificate(*dir)
	if err != nil {
		fmt.Fprintf(stderr, "sluice ca show: %v\n", err)
		return 1
	}
	writeCAInfo(stdout, *dir, c, ca.Fingerprint(c.Raw))
	writeKeyStatus(stdout, filepath.Join(*dir, ca.KeyFile))
	return 0
}

// writeKeyStatus says whether the key file exists and is private, without
// reading it.
func writeKeyStatus(w io.Writer, path string) {
	fi, err := os.Stat(path)
	switch {
	case err != nil:
		fmt.Fprintf(w, "Key File:             %s: %v\n", path, err)
	case fi.Mode().Perm()&0o077 != 0:
		fmt.Fprintf(w, "Key File:             %s mode %04o: WARNING readable by group or others, run chmod 600 %s\n", path, fi.Mode().Perm(), path)
	default:
		fmt.Fprintf(w, "Key File:             %s mode %04o\n", path, fi.Mode().Perm())
	}
}

// writeCAInfo prints what an operator checks about a CA.
func writeCAInfo(w io.Writer, dir string, c *x509.Certificate, fp string) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "Directory:\t%s\n", dir)
	fmt.Fprintf(tw, "Subject:\t%s\n", c.Subject)
	fmt.Fprintf(tw, "SHA-256 Fingerprint:\t%s\n", fp)
	fmt.Fprintf(tw, "Not Before:\t%s\n", c.NotBefore.UTC().Format(time.RFC3339))
	fmt.Fprintf(tw, "Not After:\t%s\n", c.NotAfter.UTC().Format(time.RFC3339))
	fmt.Fprintf(tw, "Key Type:\t%s\n", ca.DescribeKey(c.PublicKey))
	fmt.Fprintf(tw, "Serial:\t%X\n", c.SerialNumber)
	if now := time.Now(); now.After(c.NotAfter) {
		fmt.Fprintf(tw, "Status:\tEXPIRED: run sluice ca init in a new directory and redistribute the bundle\n")
	} else if now.Before(c.NotBefore) {
		fmt.Fprintf(tw, "Status:\tnot yet valid: check the clock\n")
	} else {
		fmt.Fprintf(tw, "Status:\tvalid\n")
	}
	tw.Flush()
}

func runCAExport(args []string, stdout, stderr io.Writer) int {
	fs, dir := caFlags("export", stderr)
	out := fs.String("out", "", "write the trust store to `FILE` (mode 0644) instead of stdout")
	format := fs.String("format", ca.FormatPEM, "pem (PEM certificates), p12 (PKCS#12 trust store, Java 12+ and OpenSSL) or jks (the PKCS#12 trust store in the legacy encoding every Java 8+ reads, also as -storetype JKS)")
	withRoots := fs.Bool("with-system-roots", false, "add the system roots ($SSL_CERT_FILE, else the distribution's bundle) after the Sluice CA: for clients told to trust only this file")
	password := fs.String("password", ca.TrustStorePassword, "password of a p12 or jks trust store (it holds only public certificates)")
	if code, done := parseCA(fs, args, stderr); done {
		return code
	}
	if !slices.Contains(ca.Formats, *format) {
		fmt.Fprintf(stderr, "sluice ca export: --format %q: use one of %s\n", *format, strings.Join(ca.Formats, ", "))
		return 2
	}
	if *format == ca.FormatPEM && *password != ca.TrustStorePassword {
		fmt.Fprintln(stderr, "sluice ca export: --password applies to --format p12 or jks only; a PEM bundle has none")
		return 2
	}
	c, err := ca.ReadCertificate(*dir)
	if err != nil {
		fmt.Fprintf(stderr, "sluice ca export: %v\n", err)
		return 1
	}
	var roots []*x509.Certificate
	if *withRoots {
		b, from, err := ca.SystemRootsPEM()
		if err != nil {
			fmt.Fprintf(stderr, "sluice ca export: --with-system-roots: %v\n", err)
			return 1
		}
		var skipped int
		roots, skipped = ca.ParsePEMCertificates(b)
		if skipped > 0 {
			fmt.Fprintf(stderr, "sluice ca export: %s: left out %d certificates that do not parse\n", from, skipped)
		}
	}
	store, err := ca.EncodeTrustStore(*format, c, roots, *password)
	if err != nil {
		fmt.Fprintf(stderr, "sluice ca export: %v\n", err)
		return 1
	}
	if *out == "" || *out == "-" {
		if _, err := stdout.Write(store); err != nil {
			fmt.Fprintf(stderr, "sluice ca export: %v\n", err)
			return 1
		}
		return 0
	}
	if err := os.WriteFile(*out, store, 0o644); err != nil {
		fmt.Fprintf(stderr, "sluice ca export: %v\n", err)
		return 1
	}
	fmt.Fprintf(stderr, "wrote %s (%s, certificates: %d, Sluice CA SHA-256 %s)\n", *out, *format, 1+len(roots)-countEqual(roots, c), ca.Fingerprint(c.Raw))
	return 0
}

// countEqual counts the certificates of certs equal to c.
func countEqual(certs []*x509.Certificate, c *x509.Certificate) int {
	n := 0
	for _, x := range certs {
		if x.Equal(c) {
			n++
		}
	}
	return n
}
