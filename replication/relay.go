package replication

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	pb "github.com/aviarydb/aviary/api/aviarypb"
	"github.com/aviarydb/aviary/internal/tlsx"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Applier applies another site's replication messages at the local site:
// Replica.ApplyRemote of a local node, or a client that fails over between
// the site's nodes.
type Applier interface {
	ApplyRemote(ctx context.Context, r *pb.ApplyRemoteRequest) (*pb.ApplyRemoteResponse, error)
}

// Source is a remote site the relay consumes: its name and id in the site
// map, and the NATS serving its replication stream.
type Source struct {
	Name    string
	ID      uint32
	NATSURL string
}

// Defaults of RelayConfig, and the consumer's acknowledgement wait.
const (
	DefaultBatch      = 256
	DefaultMaxWait    = 100 * time.Millisecond
	DefaultStallAfter = 5 * time.Second
	// AckWait is how long a source's JetStream waits for the relay to
	// acknowledge a delivered message before it delivers it again.
	AckWait = 10 * time.Second
)

// Timing of a path. An apply gets less than AckWait, so that its messages
// are not redelivered while it runs.
const (
	applyTimeout   = 8 * time.Second
	natsTimeout    = 5 * time.Second        // one bucket put or consumer info
	watermarkEvery = 200 * time.Millisecond // per key: at most 5 puts a second
	gapRetry       = time.Second            // wait after a gap before fetching again
	republishEvery = 10 * time.Second       // repeat an unanswered repair request
	minBackoff     = 100 * time.Millisecond
	maxBackoff     = 5 * time.Second
	streamWait     = time.Second // poll for a stream that does not exist yet
	infoEvery      = time.Second // consumer info while idle, for the lag
)

// RelayConfig configures a Relay.
type RelayConfig struct {
	// LocalSite is the name of the site the relay applies to. It names the
	// relay's durable consumer on every source. Required.
	LocalSite string
	// Sources are the sites to relay from (every site but LocalSite);
	// SetSources replaces them.
	Sources []Source
	// Applier applies the messages at the local site. Required.
	Applier Applier
	// Batch is the most messages fetched, and applied, at once. The
	// consumer lets at most 4×Batch messages be delivered and not yet
	// acknowledged. Default DefaultBatch.
	Batch int
	// MaxWait is how long an idle path waits for a message before it looks
	// at its state again (watermarks, lag, shutdown). Default
	// DefaultMaxWait.
	MaxWait time.Duration
	// StallAfter is how long a path may go without applying anything from
	// its source, not even a heartbeat, before it is reported stalled.
	// Sources send a heartbeat every second. Default DefaultStallAfter.
	StallAfter time.Duration
	// Logger receives the relay's logs. Default: discards.
	Logger *slog.Logger
	// Registry, if set, gets the relay's metrics (aviary_relay_*).
	Registry prometheus.Registerer
	// TLS, if set, makes every connection to a source's NATS mutual TLS:
	// the relay presents its certificate (role relay) and checks the
	// server's against the CA for the host of the source's NATS URL.
	// Sources whose NATS requires client certificates refuse a relay
	// without it. Default: plaintext.
	TLS *tlsx.Source

	// ackWait overrides AckWait, for tests.
	ackWait time.Duration
}

// PathStatus is the state of the path from one source site to the local
// site.
type PathStatus struct {
	Source   string `json:"source"`
	SourceID uint32 `json:"source_id"`
	NATSURL  string `json:"nats_url"`
	// Connected reports whether the relay holds a connection to the
	// source's NATS.
	Connected bool `json:"connected"`
	// Stalled reports that nothing from the source, not even a heartbeat,
	// has been applied for StallAfter: the source is silent or unreachable,
	// or its messages fail to apply.
	Stalled bool `json:"stalled"`
	// LagMessages is how many messages of the source the local site has
	// not applied yet, as the consumer last reported it.
	LagMessages uint64 `json:"lag_messages"`
	// LagSeconds is the age of the newest origin timestamp applied (an
	// entry's or a heartbeat's): with heartbeats every second it stays
	// around a second while the path flows, and grows while it does not.
	// Before anything is applied it counts from when the path started.
	LagSeconds float64 `json:"lag_seconds"`
	// LastHeard is when the relay last received a message of the source.
	LastHeard time.Time `json:"last_heard,omitzero"`
	// Entries applied, and skipped as applied already (redeliveries),
	// and incoming mutations that lost to newer versions.
	Applied   uint64 `json:"applied"`
	Skipped   uint64 `json:"skipped"`
	Conflicts uint64 `json:"conflicts"`
	// Errors counts failed applies, undecodable messages and failures of
	// the NATS connection, consumer or buckets; Gaps counts gaps found
	// (each origin watermark once).
	Errors      uint64    `json:"errors"`
	Gaps        uint64    `json:"gaps"`
	LastError   string    `json:"last_error,omitempty"`
	LastErrorAt time.Time `json:"last_error_at,omitzero"`
	// Origins are the source's nodes heard from, by name.
	Origins []PathOrigin `json:"origins,omitempty"`
}

// PathOrigin is what a path knows of one node of its source.
type PathOrigin struct {
	Node string `json:"node"`
	// Watermark is the highest sequence of the node applied at the local
	// site, as the last apply returned it.
	Watermark uint64 `json:"watermark"`
	// OriginAt is the origin timestamp of the newest message of the node
	// applied.
	OriginAt time.Time `json:"origin_at,omitzero"`
	// Gap is the last gap reported for the node, until the next successful
	// apply.
	Gap string `json:"gap,omitempty"`
}

// Relay applies the replication streams of other sites at the local site:
// one path, with a durable pull consumer, per source site.
type Relay struct {
	cfg     RelayConfig
	log     *slog.Logger
	metrics *relayMetrics

	mu      sync.Mutex
	sources map[string]Source
	paths   map[string]*path
	// retiring holds the done channels of paths stopped by SetSources.
	retiring map[string]<-chan struct{}
	runCtx   context.Context // the Run in progress, or nil
	running  bool
	wg       sync.WaitGroup // the paths' goroutines
}

// NewRelay checks cfg, fills in its defaults, and returns a relay that Run
// starts.
func NewRelay(cfg RelayConfig) (*Relay, error) {
	switch {
	case cfg.LocalSite == "":
		return nil, errors.New("replication: RelayConfig.LocalSite is required")
	case cfg.Applier == nil:
		return nil, errors.New("replication: RelayConfig.Applier is required")
	case cfg.Batch < 0:
		return nil, fmt.Errorf("replication: batch %d is negative", cfg.Batch)
	case cfg.MaxWait < 0:
		return nil, fmt.Errorf("replication: max wait %s is negative", cfg.MaxWait)
	case cfg.StallAfter < 0:
		return nil, fmt.Errorf("replication: stall-after %s is negative", cfg.StallAfter)
	}
	if cfg.Batch == 0 {
		cfg.Batch = DefaultBatch
	}
	if cfg.MaxWait == 0 {
		cfg.MaxWait = DefaultMaxWait
	}
	if cfg.StallAfter == 0 {
		cfg.StallAfter = DefaultStallAfter
	}
	if cfg.ackWait == 0 {
		cfg.ackWait = AckWait
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	sources, err := checkSources(cfg.LocalSite, cfg.Sources)
	if err != nil {
		return nil, err
	}
	r := &Relay{
		cfg:      cfg,
		log:      cfg.Logger.With("component", "relay", "site", cfg.LocalSite),
		sources:  sources,
		paths:    map[string]*path{},
		retiring: map[string]<-chan struct{}{},
	}
	r.metrics = newRelayMetrics(r)
	if cfg.Registry != nil {
		if err := r.metrics.register(cfg.Registry); err != nil {
			return nil, fmt.Errorf("replication: relay metrics: %w", err)
		}
	}
	return r, nil
}

// checkSource reports what is wrong with s as a source of localSite.
func checkSource(localSite string, s Source) error {
	switch {
	case s.Name == "":
		return errors.New("replication: a source has no name")
	case s.Name == localSite:
		return fmt.Errorf("replication: source %q is the local site: a site never relays its own writes", s.Name)
	case s.NATSURL == "":
		return fmt.Errorf("replication: source %q has no NATS URL", s.Name)
	}
	return nil
}

func checkSources(localSite string, list []Source) (map[string]Source, error) {
	m := make(map[string]Source, len(list))
	for _, s := range list {
		if err := checkSource(localSite, s); err != nil {
			return nil, err
		}
		if _, dup := m[s.Name]; dup {
			return nil, fmt.Errorf("replication: source %q is listed twice", s.Name)
		}
		m[s.Name] = s
	}
	return m, nil
}

// Run relays every source until ctx ends, each on a goroutine of its own
// that reconnects as long as it runs. It returns nil once ctx has ended and
// every path has stopped: an apply in flight is finished and acknowledged,
// and messages fetched but not applied are handed back to their source.
func (r *Relay) Run(ctx context.Context) error {
	r.mu.Lock()
	if r.running {
		r.mu.Unlock()
		return errors.New("replication: relay is already running")
	}
	r.running, r.runCtx = true, ctx
	for _, name := range slices.Sorted(maps.Keys(r.sources)) {
		r.startPath(r.sources[name])
	}
	r.log.Info("relay running", "sources", sourceNames(r.sources))
	r.mu.Unlock()

	<-ctx.Done()
	r.mu.Lock()
	r.runCtx = nil // no path starts from now on
	r.mu.Unlock()
	r.wg.Wait()
	r.mu.Lock()
	for name := range r.paths {
		r.metrics.forget(name)
	}
	clear(r.paths)
	clear(r.retiring)
	r.running = false
	r.mu.Unlock()
	r.log.Info("relay stopped")
	return nil
}

// SetSources replaces the sources: paths of sources no longer listed stop,
// new ones start, and a source whose id or NATS URL changed restarts once
// its old path has stopped. Invalid sources are logged and left out.
func (r *Relay) SetSources(list []Source) {
	next := make(map[string]Source, len(list))
	for _, s := range list {
		if err := checkSource(r.cfg.LocalSite, s); err != nil {
			r.log.Error("source left out", "source", s.Name, "err", err)
			continue
		}
		if _, dup := next[s.Name]; dup {
			r.log.Error("source left out", "source", s.Name, "err", "listed twice")
			continue
		}
		next[s.Name] = s
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if maps.Equal(next, r.sources) {
		return
	}
	r.log.Info("relay sources changed", "sources", sourceNames(next), "was", sourceNames(r.sources))
	prev := r.sources
	r.sources = next
	if r.runCtx == nil {
		return
	}
	for name, old := range prev {
		if s, ok := next[name]; ok && s == old {
			continue
		}
		if p := r.paths[name]; p != nil {
			p.cancel()
			r.retiring[name] = p.done
			delete(r.paths, name)
			r.metrics.forget(name)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(next)) {
		if old, ok := prev[name]; ok && old == next[name] {
			continue
		}
		r.startPath(next[name])
	}
}

func sourceNames(m map[string]Source) []string { return slices.Sorted(maps.Keys(m)) }

// startPath starts the path of src (r.mu held, Run in progress). If an
// earlier path of the same source is still stopping, the new one waits for
// it before it connects, so that two never share the durable consumer.
func (r *Relay) startPath(src Source) {
	after := r.retiring[src.Name]
	delete(r.retiring, src.Name)
	ctx, cancel := context.WithCancel(r.runCtx)
	p := newPath(r, src, cancel)
	r.paths[src.Name] = p
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		p.run(ctx, after)
	}()
}

// Status reports every path, by source name.
func (r *Relay) Status() []PathStatus {
	r.mu.Lock()
	paths := make([]*path, 0, len(r.paths))
	for _, name := range slices.Sorted(maps.Keys(r.paths)) {
		paths = append(paths, r.paths[name])
	}
	r.mu.Unlock()
	now := time.Now()
	out := make([]PathStatus, len(paths))
	for i, p := range paths {
		out[i] = p.status(now)
	}
	return out
}

// gapPattern finds the applying node's watermark in a gap error
// ("gap: origin <site>/<node> applied up to <W>, next entry <S> follows <P>").
var gapPattern = regexp.MustCompile(`applied up to (\d+)`)

// parseGap reports whether err is a gap reported by ApplyRemote, and the
// watermark it names (ok is false if the message has none).
func parseGap(err error) (isGap bool, watermark uint64, ok bool) {
	st, isStatus := status.FromError(err)
	if !isStatus || st.Code() != codes.FailedPrecondition || !strings.HasPrefix(st.Message(), "gap:") {
		return false, 0, false
	}
	m := gapPattern.FindStringSubmatch(st.Message())
	if m == nil {
		return true, 0, false
	}
	w, perr := strconv.ParseUint(m[1], 10, 64)
	return true, w, perr == nil
}
