package node

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/aviarydb/aviary/ids"
	"github.com/aviarydb/aviary/internal/hedge"
	"github.com/aviarydb/aviary/internal/tlsx"
	"github.com/aviarydb/aviary/shard"
	"github.com/prometheus/client_golang/prometheus"
)

// Default listen addresses: loopback, on ports no well-known service uses
// (NATS is 4222, its monitoring 8222).
const (
	DefaultGRPCAddr = "127.0.0.1:7390"
	DefaultHTTPAddr = "127.0.0.1:7391"
	DefaultRaftAddr = "127.0.0.1:7392"
)

// DefaultTables is the table set a new node creates: content tables for
// statuses and users, index tables for per-user timelines (what each user
// posted), the follow graph, and the home timelines' fan-out queue and
// celebrity set (package timeline/home).
var DefaultTables = []shard.TableInfo{
	{Name: "statuses", Kind: shard.KindContent},
	{Name: "users", Kind: shard.KindContent},
	{Name: "user_timeline", Kind: shard.KindIndex},
	{Name: "following", Kind: shard.KindIndex},
	{Name: "followers", Kind: shard.KindIndex},
	{Name: "fanout", Kind: shard.KindIndex},
	{Name: "celebrities", Kind: shard.KindIndex},
}

// Config configures a Node. Zero fields take the defaults of EnsureDefaults.
type Config struct {
	// DataDir holds the node's Pebble store. Default "aviary-data".
	DataDir string
	// GRPCAddr is the gRPC listen address. Default DefaultGRPCAddr.
	GRPCAddr string
	// HTTPAddr serves /metrics and /healthz. Default DefaultHTTPAddr.
	HTTPAddr string
	// RaftAddr is the nameserver's raft address. Default DefaultRaftAddr.
	RaftAddr string
	// NodeID names the node in the site's map. Default "node-<worker id>".
	NodeID string
	// Join is the gRPC address of any node of an existing site to join.
	// Empty: found a new one-node site.
	Join string
	// ReplicaTimeout bounds one write to one replica, one read from a
	// replica while others remain, and one timeline push. Default 5s.
	ReplicaTimeout time.Duration
	// SiteID is this site's number in ids and versions, 0 to ids.MaxSite.
	SiteID uint32
	// SiteName names the site in logs. Default "local".
	SiteName string
	// WorkerID is this node's number within its site, 0 to ids.MaxWorker.
	WorkerID uint32
	// DefaultShards is the number of shard trees a new site's map is seeded
	// with (each a Replicating root over one physical shard on the founding
	// node, every table forwarded evenly over them). Default 8.
	DefaultShards int
	// Tables is the table set a new site's map is seeded with. Default
	// DefaultTables.
	Tables []shard.TableInfo
	// Limits bound requests; zero fields take shard's defaults.
	Limits shard.Limits
	// MaxClockSkew is how far ahead of the local clock a version or entry id
	// may be. Default 10s.
	MaxClockSkew time.Duration
	// TombstoneGrace is how long deletes are kept as tombstones. It must
	// exceed the longest replication outage you retain. Default 168h.
	TombstoneGrace time.Duration
	// GCInterval is how often tombstones older than the grace are collected.
	// Default 1h.
	GCInterval time.Duration
	// ShutdownTimeout bounds the wait for in-flight requests on shutdown.
	// Default 15s.
	ShutdownTimeout time.Duration
	// CacheBytes is Pebble's block cache size. Default 256 MiB.
	CacheBytes int64
	// RescanVersionBound: see shard.Options.RescanVersionBound.
	RescanVersionBound bool
	// Pprof serves Go's profiler under /debug/pprof/ on the HTTP address.
	Pprof bool

	// NATSURL is the NATS (JetStream) of the site's replication stream.
	// Empty: a node that founds a site embeds a nats-server listening on
	// NATSAddr, and a joining node uses the one in the site map. NATSOff
	// disables replication.
	NATSURL string
	// NATSAddr is the embedded nats-server's client address. Default
	// 127.0.0.1:0 (any free port); cmd/node's default is 127.0.0.1:7393.
	NATSAddr string
	// ReplicationMaxAge and ReplicationMaxBytes bound the site's stream
	// (JetStream limits; the outbox, not the stream, is what guarantees
	// delivery). Defaults 168h and 1 GiB.
	ReplicationMaxAge   time.Duration
	ReplicationMaxBytes int64
	// HeartbeatInterval is how often each node heartbeats on the stream.
	// Default 1s.
	HeartbeatInterval time.Duration

	// Timeline gives the node the timeline role: it holds home timelines
	// in memory, on the site's three timeline rings, and works its share of
	// the fan-out queue. Every node serves the Timelines service's user
	// calls either way. cmd/node's default is true.
	Timeline bool
	// StartRecovering: refuse this site's clients' writes from the start,
	// as a recovering site does, until the site map lists the site in a
	// state other than active (then the map decides). A DR drill starts a
	// failed-over site's nodes so.
	StartRecovering bool
	// TLS, if set, secures every link of the node with mutual TLS: its gRPC
	// server (clients present a certificate of the CA; calls are
	// authorized by the role in it), its calls to other nodes, raft, and
	// the embedded nats-server and the node's NATS connections. Nil:
	// plaintext, for development on loopback.
	TLS *tlsx.Source
	// Tokens, with TLS, lets clients without a certificate authenticate
	// each call with a bearer token (tlsx.Tokens).
	Tokens *tlsx.Tokens
	// ClientRate bounds the calls per second of each client (the identity
	// of its certificate, or its IP address without TLS), with bursts of
	// ClientBurst; above it calls get ResourceExhausted. Nodes and relays
	// are not limited. 0: no limit.
	ClientRate  float64
	ClientBurst int
	// MaxWriteBytesInFlight bounds the bytes of clients' writes (keys,
	// values and payloads, as Limits.MaxBatchBytes counts them) the node
	// has taken and not yet answered, over all calls and write streams:
	// past it a write waits for room until near its deadline, then gets
	// ResourceExhausted (a write stream stops reading meanwhile). The memory a
	// write holds is a small multiple of what it counts. Aviary's own
	// writes (router.Internal) are not counted. Default 512 MiB; at least
	// Limits.MaxBatchBytes, so that any one write fits.
	MaxWriteBytesInFlight int64
	// Timelines configures the home timelines (capacity, celebrity
	// threshold, fan-out partitions, hedging); zero fields take the
	// defaults of timeline.Options and home.Config.
	Timelines TimelineConfig

	// Logger receives the node's logs. Default: discards.
	Logger *slog.Logger
	// Clock gives wall time. Default ids.SystemClock.
	Clock ids.Clock
	// Registry receives the node's metrics. Default: a new registry with
	// the Go and process collectors.
	Registry *prometheus.Registry
}

// EnsureDefaults fills zero fields with their defaults.
func (c *Config) EnsureDefaults() {
	if c.DataDir == "" {
		c.DataDir = "aviary-data"
	}
	if c.GRPCAddr == "" {
		c.GRPCAddr = DefaultGRPCAddr
	}
	if c.HTTPAddr == "" {
		c.HTTPAddr = DefaultHTTPAddr
	}
	if c.RaftAddr == "" {
		c.RaftAddr = DefaultRaftAddr
	}
	if c.NodeID == "" {
		c.NodeID = fmt.Sprintf("node-%d", c.WorkerID)
	}
	if c.ReplicaTimeout == 0 {
		c.ReplicaTimeout = 5 * time.Second
	}
	if c.SiteName == "" {
		c.SiteName = "local"
	}
	if c.DefaultShards == 0 {
		c.DefaultShards = 8
	}
	if c.Tables == nil {
		c.Tables = DefaultTables
	}
	c.Limits.EnsureDefaults()
	if c.Timelines.HedgeMin == 0 {
		c.Timelines.HedgeMin = hedge.DefaultMin
	}
	if c.Timelines.HedgeMax == 0 {
		c.Timelines.HedgeMax = hedge.DefaultMax
	}
	if c.MaxWriteBytesInFlight == 0 {
		c.MaxWriteBytesInFlight = 512 << 20
	}
	if c.MaxClockSkew == 0 {
		c.MaxClockSkew = 10 * time.Second
	}
	if c.TombstoneGrace == 0 {
		c.TombstoneGrace = 168 * time.Hour
	}
	if c.GCInterval == 0 {
		c.GCInterval = time.Hour
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = 15 * time.Second
	}
	if c.NATSAddr == "" {
		c.NATSAddr = "127.0.0.1:0"
	}
	if c.ReplicationMaxAge == 0 {
		c.ReplicationMaxAge = 168 * time.Hour
	}
	if c.ReplicationMaxBytes == 0 {
		c.ReplicationMaxBytes = 1 << 30
	}
	if c.HeartbeatInterval == 0 {
		c.HeartbeatInterval = time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Clock == nil {
		c.Clock = ids.SystemClock{}
	}
}

// Validate reports a setting outside its allowed range.
func (c *Config) Validate() error {
	var errs []error
	if c.SiteID > ids.MaxSite {
		errs = append(errs, fmt.Errorf("site id %d: must be in [0, %d]", c.SiteID, ids.MaxSite))
	}
	if c.Tokens != nil && c.TLS == nil {
		errs = append(errs, errors.New("tokens need TLS: a bearer token must not cross the network in plaintext"))
	}
	if c.WorkerID > ids.MaxWorker {
		errs = append(errs, fmt.Errorf("worker id %d: must be in [0, %d]", c.WorkerID, ids.MaxWorker))
	}
	if c.DefaultShards < 1 || c.DefaultShards > 1024 {
		errs = append(errs, fmt.Errorf("default shards %d: must be in [1, 1024]", c.DefaultShards))
	}
	if c.MaxClockSkew < 0 {
		errs = append(errs, fmt.Errorf("max clock skew %s: must not be negative", c.MaxClockSkew))
	}
	if c.TombstoneGrace < time.Minute {
		errs = append(errs, fmt.Errorf("tombstone grace %s: must be at least 1m", c.TombstoneGrace))
	}
	if c.GCInterval < time.Second {
		errs = append(errs, fmt.Errorf("gc interval %s: must be at least 1s", c.GCInterval))
	}
	if err := c.Limits.Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := hedge.CheckBounds(c.Timelines.HedgeMin, c.Timelines.HedgeMax); err != nil {
		errs = append(errs, err)
	}
	if c.MaxWriteBytesInFlight < int64(c.Limits.MaxBatchBytes) {
		errs = append(errs, fmt.Errorf("max write bytes in flight %d: must be at least the max batch bytes, %d", c.MaxWriteBytesInFlight, c.Limits.MaxBatchBytes))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("node: invalid config: %w", err)
	}
	return nil
}

// TimelineConfig configures a node's home timelines.
type TimelineConfig struct {
	// Capacity is the most entries of one timeline. Default 800.
	Capacity int
	// CelebrityFollowers: authors with more followers are merged in at read
	// time instead of pushed. Default 10000.
	CelebrityFollowers int
	// FanoutPartitions is the fan-out queue partitions per site; every node
	// of a site must use the same. Default 16.
	FanoutPartitions int
	// FanoutLinger: a fan-out worker that found fewer posts queued than a
	// batch waits this long before it looks again, so that posts go out
	// together. Default 0.
	FanoutLinger time.Duration
	// HedgeMin and HedgeMax bound the delay after which a timeline read,
	// or a Get routed to another node's replica, is sent to the next
	// replica too. Defaults 1ms and 50ms.
	HedgeMin, HedgeMax time.Duration
	// RepairQueue is the most repairs of single timelines waiting at once;
	// a node that misses pushes to more timelines is caught up whole from
	// its siblings once it answers. Default 4096.
	RepairQueue int
	// OnDelivered, if set, is called for every post this node's fan-out
	// workers delivered, with the time it was accepted (for benchmarks).
	OnDelivered func(statusID uint64, accepted time.Time)
}
