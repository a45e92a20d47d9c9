package main

import (
	"os"

	"github.com/sluicehq/sluice/config"
)

// loadConfig reads the config file (defaults when empty) and applies the
// command-line overrides that `sluice run` and `sluice proxy` share: the
// policy file, and the CA directory (flag, else $SLUICE_CA_DIR when no
// config file was given).
func loadConfig(cfgPath, policyPath, caDir string) (config.Config, error) {
	cfg, err := config.Load(cfgPath)
	if err != nil {
		return cfg, err
	}
	if policyPath != "" {
		cfg.PolicyFile = policyPath
	}
	switch {
	case caDir != "":
		cfg.CA.Dir, cfg.CA.Secret = caDir, "" // the flag wins over the config's ca.secret too
	case os.Getenv("SLUICE_CA_DIR") != "" && cfgPath == "":
		cfg.CA.Dir = os.Getenv("SLUICE_CA_DIR")
	}
	return cfg, nil
}
