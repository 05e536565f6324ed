package shard

import (
	"context"
	"fmt"
	"log/slog"
)

// pebbleLogger adapts slog to Pebble's Logger. Pebble calls Fatalf only on
// broken invariants; it is logged at error level and Pebble then panics
// itself, as its contract requires.
type pebbleLogger struct{ l *slog.Logger }

func (p pebbleLogger) Infof(format string, args ...any) {
	p.l.Log(context.Background(), slog.LevelDebug, fmt.Sprintf(format, args...), "component", "pebble")
}

func (p pebbleLogger) Errorf(format string, args ...any) {
	p.l.Error(fmt.Sprintf(format, args...), "component", "pebble")
}

func (p pebbleLogger) Fatalf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	p.l.Error(msg, "component", "pebble", "fatal", true)
	panic(msg)
}
