package natsx

import (
	"context"
	"fmt"
	"log/slog"
	"sync"

	"github.com/nats-io/nats-server/v2/server"
)

// serverLogger adapts slog to nats-server's Logger. The server's own logger
// exits the process on Fatalf; this one logs at error level and keeps the
// first fatal message, so that StartServer can fail with it instead.
type serverLogger struct {
	l     *slog.Logger
	debug bool

	mu       sync.Mutex
	fatalMsg string
}

var _ server.Logger = (*serverLogger)(nil)

func newServerLogger(l *slog.Logger) *serverLogger {
	l = l.With("component", "nats-server")
	return &serverLogger{l: l, debug: l.Enabled(context.Background(), slog.LevelDebug)}
}

func (s *serverLogger) log(level slog.Level, format string, v []any) {
	if !s.l.Enabled(context.Background(), level) {
		return
	}
	s.l.Log(context.Background(), level, fmt.Sprintf(format, v...))
}

// fatal returns the first fatal message logged, or "".
func (s *serverLogger) fatal() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.fatalMsg
}

func (s *serverLogger) Noticef(format string, v ...any) { s.log(slog.LevelInfo, format, v) }
func (s *serverLogger) Warnf(format string, v ...any)   { s.log(slog.LevelWarn, format, v) }
func (s *serverLogger) Errorf(format string, v ...any)  { s.log(slog.LevelError, format, v) }
func (s *serverLogger) Debugf(format string, v ...any)  { s.log(slog.LevelDebug, format, v) }
func (s *serverLogger) Tracef(format string, v ...any)  { s.log(slog.LevelDebug, format, v) }

func (s *serverLogger) Fatalf(format string, v ...any) {
	msg := fmt.Sprintf(format, v...)
	s.mu.Lock()
	if s.fatalMsg == "" {
		s.fatalMsg = msg
	}
	s.mu.Unlock()
	s.l.Error(msg, "fatal", true)
}
