package natsx

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Settings of RawPublishConsume's consumer: it asks for up to
// rawPullBatch messages at a time and acknowledges every rawAckEvery-th
// message (and the last), which with AckAll acknowledges all before it.
const (
	rawPullBatch = 1024
	rawAckEvery  = 256
)

// RawResult is what RawPublishConsume measured.
type RawResult struct {
	// Messages is how many messages were published and consumed.
	Messages int
	// Elapsed runs from the first publish until every publish is
	// acknowledged and every message consumed.
	Elapsed time.Duration
	// PerSecond is Messages / Elapsed.
	PerSecond float64
	// P50 and P99 are percentiles of the time from a message's publish
	// call to its delivery to the consumer.
	P50, P99 time.Duration
}

// RawPublishConsume measures JetStream alone, as a baseline for
// replication benchmarks: it publishes n messages of size bytes to subject,
// which must be one of stream's subjects, with asynchronous publishes (at
// most PublishAsyncMaxPending unacknowledged) and waits for every
// acknowledgement, while an ephemeral pull consumer of the subject's new
// messages receives them and acknowledges them in batches. Each payload
// starts with its publish time, so size is at least 8. The consumer is
// deleted before it returns; the messages stay in the stream.
//
// The publisher runs flat out, so the latencies are those of a saturated
// stream: mostly time spent queued behind the publishes in flight and the
// consumer's backlog, not an idle round trip.
func RawPublishConsume(ctx context.Context, js jetstream.JetStream, stream, subject string, n, size int) (RawResult, error) {
	if n < 1 {
		return RawResult{}, fmt.Errorf("natsx: raw: %d messages, want at least 1", n)
	}
	if size < 8 {
		return RawResult{}, fmt.Errorf("natsx: raw: size %d, want at least 8 (the payload carries a timestamp)", size)
	}
	str, err := js.Stream(ctx, stream)
	if err != nil {
		return RawResult{}, fmt.Errorf("natsx: raw: stream %s: %w", stream, err)
	}
	cons, err := str.CreateConsumer(ctx, jetstream.ConsumerConfig{
		FilterSubject:     subject,
		DeliverPolicy:     jetstream.DeliverNewPolicy,
		AckPolicy:         jetstream.AckAllPolicy,
		MaxAckPending:     4 * rawPullBatch,
		InactiveThreshold: time.Minute,
		MemoryStorage:     true,
	})
	if err != nil {
		return RawResult{}, fmt.Errorf("natsx: raw: consumer on %s: %w", subject, err)
	}
	defer func() {
		// Best effort: an ephemeral consumer goes away by itself after
		// InactiveThreshold anyway.
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = str.DeleteConsumer(dctx, cons.CachedInfo().Name)
	}()

	// The consumer's callback runs on one goroutine; latencies and recv
	// are read only after it has stopped.
	lat := make([]time.Duration, 0, n)
	recv := 0
	consumed := make(chan struct{})
	cc, err := cons.Consume(func(m jetstream.Msg) {
		if recv >= n {
			return
		}
		now := time.Now()
		if d := m.Data(); len(d) >= 8 {
			sent := int64(binary.BigEndian.Uint64(d))
			lat = append(lat, now.Sub(time.Unix(0, sent)))
		}
		recv++
		if recv%rawAckEvery == 0 || recv == n {
			_ = m.Ack()
		}
		if recv == n {
			close(consumed)
		}
	}, jetstream.PullMaxMessages(rawPullBatch))
	if err != nil {
		return RawResult{}, fmt.Errorf("natsx: raw: consume %s: %w", subject, err)
	}
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			cc.Stop()
			<-cc.Closed()
		}
	}
	defer stop()

	// A JetStream context of its own, so that the bound on publishes in
	// flight and the error count are this run's.
	var (
		mu     sync.Mutex
		pubErr error
		nerr   int
	)
	pjs, err := jetstream.New(js.Conn(),
		jetstream.WithPublishAsyncMaxPending(PublishAsyncMaxPending),
		jetstream.WithPublishAsyncErrHandler(func(_ jetstream.JetStream, _ *nats.Msg, err error) {
			mu.Lock()
			defer mu.Unlock()
			if pubErr == nil {
				pubErr = err
			}
			nerr++
		}))
	if err != nil {
		return RawResult{}, fmt.Errorf("natsx: raw: %w", err)
	}
	defer pjs.CleanupPublisher()

	start := time.Now()
	for i := range n {
		if i%1024 == 0 {
			if err := ctx.Err(); err != nil {
				return RawResult{}, fmt.Errorf("natsx: raw: after %d publishes: %w", i, err)
			}
		}
		buf := make([]byte, size)
		for {
			binary.BigEndian.PutUint64(buf, uint64(time.Now().UnixNano()))
			_, err := pjs.PublishAsync(subject, buf)
			if err == nil {
				break
			}
			// Waited 200ms for a free slot under PublishAsyncMaxPending:
			// try again unless ctx has ended.
			if errors.Is(err, jetstream.ErrTooManyStalledMsgs) && ctx.Err() == nil {
				continue
			}
			if ctx.Err() != nil {
				err = ctx.Err()
			}
			return RawResult{}, fmt.Errorf("natsx: raw: publish %d: %w", i, err)
		}
	}
	select {
	case <-pjs.PublishAsyncComplete():
	case <-ctx.Done():
		return RawResult{}, fmt.Errorf("natsx: raw: waiting for %d publish acks: %w", pjs.PublishAsyncPending(), ctx.Err())
	}
	mu.Lock()
	err, nfail := pubErr, nerr
	mu.Unlock()
	if err != nil {
		return RawResult{}, fmt.Errorf("natsx: raw: %d of %d publishes failed, first: %w", nfail, n, err)
	}
	select {
	case <-consumed:
	case <-ctx.Done():
		return RawResult{}, fmt.Errorf("natsx: raw: waiting for the consumer: %w", ctx.Err())
	}
	elapsed := time.Since(start)
	stop()

	slices.Sort(lat)
	res := RawResult{
		Messages:  n,
		Elapsed:   elapsed,
		PerSecond: float64(n) / elapsed.Seconds(),
	}
	if len(lat) > 0 {
		res.P50 = percentile(lat, 0.50)
		res.P99 = percentile(lat, 0.99)
	}
	return res, nil
}

// percentile returns the q-th quantile of sorted, by nearest rank.
func percentile(sorted []time.Duration, q float64) time.Duration {
	i := int(q*float64(len(sorted))+0.5) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}
