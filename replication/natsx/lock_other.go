//go:build !unix

package natsx

import (
	"fmt"
	"os"
	"path/filepath"
)

// lockDir opens dir's lock file without locking it: on this platform
// nothing keeps two servers off the same store.
func lockDir(dir string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, lockName), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("natsx: %w", err)
	}
	return f, nil
}
