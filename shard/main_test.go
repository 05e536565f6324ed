package shard

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the run if goroutines started by the tests, Pebble's
// included, outlive them: every Store must be closed.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
