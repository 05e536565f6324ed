package natsx

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/aviarydb/aviary/internal/tlsx"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// PublishAsyncMaxPending bounds the asynchronous publishes in flight on a
// JetStream context made by Connect, and in RawPublishConsume.
const PublishAsyncMaxPending = 4096

// Connection settings of Connect. A link between sites is expected to drop
// now and then; a client notices a dead one within about
// PingInterval*(MaxPingsOutstanding+1) and retries every ReconnectWait, plus
// jitter, forever.
const (
	ReconnectWait       = 500 * time.Millisecond
	PingInterval        = 20 * time.Second
	MaxPingsOutstanding = 2
)

// Connect connects to the NATS server at url (a comma-separated list is
// accepted) under the client name name, and returns the connection and a
// JetStream context on it. The connection reconnects forever, and messages
// published while it is down are buffered (up to nats.go's default of
// 8 MiB). If no server answers at first, Connect keeps trying until the
// first connection is made or ctx ends. opts are applied after Connect's
// own options, so they may override them; LogEvents is one. Close the
// connection when done.
func Connect(ctx context.Context, url, name string, opts ...nats.Option) (*nats.Conn, jetstream.JetStream, error) {
	all := []nats.Option{
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(ReconnectWait),
		nats.PingInterval(PingInterval),
		nats.MaxPingsOutstanding(MaxPingsOutstanding),
		nats.RetryOnFailedConnect(true),
	}
	nc, err := nats.Connect(url, append(all, opts...)...)
	if err != nil {
		return nil, nil, fmt.Errorf("natsx: connect to %s: %w", url, err)
	}
	if err := waitConnected(ctx, nc); err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("natsx: connect to %s: %w", url, err)
	}
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(PublishAsyncMaxPending))
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("natsx: jetstream: %w", err)
	}
	return nc, js, nil
}

// waitConnected waits until nc is connected, is closed, or ctx ends.
func waitConnected(ctx context.Context, nc *nats.Conn) error {
	ch := nc.StatusChanged(nats.CONNECTED, nats.CLOSED)
	defer nc.RemoveStatusListener(ch)
	for {
		switch {
		case nc.IsConnected():
			return nil
		case nc.IsClosed():
			if err := nc.LastError(); err != nil {
				return err
			}
			return nats.ErrConnectionClosed
		}
		select {
		case <-ch:
		case <-ctx.Done():
			if err := nc.LastError(); err != nil {
				return fmt.Errorf("%w (last error: %v)", ctx.Err(), err)
			}
			return ctx.Err()
		}
	}
}

// LogEvents is a Connect option that logs the connection's events to l:
// disconnections, reconnections and asynchronous errors at warning level,
// the first connection and the final close at info level.
func LogEvents(l *slog.Logger) nats.Option {
	return func(o *nats.Options) error {
		l := l.With("component", "nats", "name", o.Name)
		o.ConnectedCB = func(nc *nats.Conn) {
			l.Info("nats connected", "url", nc.ConnectedUrlRedacted())
		}
		o.DisconnectedErrCB = func(_ *nats.Conn, err error) {
			if err != nil {
				l.Warn("nats disconnected", "err", err)
				return
			}
			l.Info("nats disconnected")
		}
		o.ReconnectedCB = func(nc *nats.Conn) {
			l.Warn("nats reconnected", "url", nc.ConnectedUrlRedacted())
		}
		o.ClosedCB = func(nc *nats.Conn) {
			if err := nc.LastError(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
				l.Info("nats connection closed", "err", err)
				return
			}
			l.Info("nats connection closed")
		}
		o.AsyncErrorCB = func(_ *nats.Conn, sub *nats.Subscription, err error) {
			if sub != nil {
				l.Warn("nats async error", "subject", sub.Subject, "err", err)
				return
			}
			l.Warn("nats async error", "err", err)
		}
		return nil
	}
}

// Secure returns the options of a mutual-TLS connection to the NATS server
// at url with src's certificate (none with a nil src: plaintext).
func Secure(src *tlsx.Source, url string) []nats.Option {
	if src == nil {
		return nil
	}
	return []nats.Option{nats.Secure(src.ClientConfig(tlsx.ServerNameOf(url), tlsx.Expect{}))}
}
