// Package logx builds the log/slog logger of Aviary's binaries from their
// --log-format and --log-level flags.
package logx

import (
	"fmt"
	"log/slog"
	"os"
)

// New returns a logger to standard error: format "text" or "json", level
// "debug", "info", "warn" or "error". The errors name the flags.
func New(format, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", format)
}
