//go:build !linux

package node

import "errors"

func fileLimit() (soft, hard uint64, err error) {
	return 0, 0, errors.New("open-file limit: not supported on this OS")
}

func setFileLimit(soft, hard uint64) error {
	return errors.New("open-file limit: not supported on this OS")
}
