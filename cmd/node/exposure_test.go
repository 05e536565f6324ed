package main

import (
	"io"
	"strings"
	"testing"
)

// TestRefusesPlaintextBeyondLoopback: without TLS, the node refuses to
// listen beyond loopback, and says how to proceed, before touching
// anything.
func TestRefusesPlaintextBeyondLoopback(t *testing.T) {
	for _, args := range [][]string{
		{"--grpc-addr", "0.0.0.0:0"},
		{"--raft-addr", ":0"},
		{"--nats-addr", "10.1.2.3:0"},
	} {
		cmd := newCommand()
		cmd.SetOut(io.Discard)
		cmd.SetErr(io.Discard)
		cmd.SetArgs(append(args, "--data-dir", t.TempDir(), "--log-level", "error"))
		err := cmd.Execute()
		if err == nil || !strings.Contains(err.Error(), "without TLS") || !strings.Contains(err.Error(), "--insecure") {
			t.Errorf("%v: %v, want a refusal naming --insecure", args, err)
		}
	}
}
