package config

import "io"

// errEOF is what yaml.v3 returns for an empty document.
func errEOF() error { return io.EOF }
