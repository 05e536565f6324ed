// Command node runs an Aviary storage node. With no flags it is a complete
// one-node site: data in ./aviary-data, gRPC on 127.0.0.1:7390, metrics and
// health on 127.0.0.1:7391, the default tables ready to use.
//
// Every flag can also be set by an environment variable: --data-dir is
// AVIARY_DATA_DIR, and so on. A flag given on the command line wins.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/aviarydb/aviary/internal/envflag"
	"github.com/aviarydb/aviary/internal/logx"
	"github.com/aviarydb/aviary/internal/tlsx"
	"github.com/aviarydb/aviary/node"
	"github.com/aviarydb/aviary/shard"
	"github.com/spf13/cobra"
)

func main() {
	if err := newCommand().Execute(); err != nil {
		os.Exit(1)
	}
}

func newCommand() *cobra.Command {
	var (
		cfg        node.Config
		tlsFlags   tlsx.Flags
		tokensFile string
		tables     string
		logFormat  string
		logLevel   string
	)
	cfg.EnsureDefaults()
	cmd := &cobra.Command{
		Use:   "node",
		Short: "Run an Aviary storage node",
		Long: `Run an Aviary storage node: physical shards on Pebble behind a gRPC API
(aviary.v1.Data, ShardAdmin, Timelines, Nameserver and Replica,
grpc.health.v1, server reflection),
Prometheus /metrics and /healthz over HTTP.

With no flags it is a complete one-node site on 127.0.0.1, with its data in
./aviary-data: a one-voter nameserver (raft) holding the site's shard map,
seeded with the default tables and shard trees. With --join it joins an
existing site instead. Writes are journaled and acknowledged only after they
are fsynced. SIGINT or SIGTERM shut it down gracefully.

With --tls-ca, --tls-cert and --tls-key every link is mutual TLS 1.3 (clients,
other nodes, raft, the embedded nats-server), and every call is authorized
by the role in its client's certificate (read, write, admin, node, relay);
certificates are re-read when their files change. Without them the node
serves plaintext, which it refuses beyond loopback unless --insecure.

Every flag can be set by an environment variable named AVIARY_ and the flag
name in capitals with '-' as '_' (--data-dir: AVIARY_DATA_DIR).`,
		Example: `  go run ./cmd/node
  AVIARY_DATA_DIR=/var/lib/aviary go run ./cmd/node --grpc-addr 127.0.0.1:7490`,
		SilenceUsage: true,
		Args:         cobra.NoArgs,
		PreRunE: func(cmd *cobra.Command, _ []string) error {
			return envflag.Apply(cmd.Flags())
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			logger, err := logx.New(logFormat, logLevel)
			if err != nil {
				return err
			}
			if cfg.Tables, err = parseTables(tables); err != nil {
				return err
			}
			cfg.Logger = logger
			if cfg.TLS, err = tlsFlags.Load(logger); err != nil {
				return err
			}
			if tokensFile != "" {
				if cfg.Tokens, err = tlsx.LoadTokens(tokensFile); err != nil {
					return err
				}
			}
			if err := tlsx.CheckExposure(cfg.TLS, tlsFlags.Insecure, cfg.GRPCAddr, cfg.RaftAddr, natsListen(cfg)); err != nil {
				return err
			}
			if cfg.TLS == nil && tlsFlags.Insecure {
				logger.Warn("serving plaintext (--insecure): no TLS, no authentication, no authorization")
			}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			n, err := node.New(ctx, cfg)
			if err != nil {
				logger.Error("node failed to start", "err", err)
				return err
			}
			if err := n.Run(ctx); err != nil {
				logger.Error("node stopped with an error", "err", err)
				return err
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.SortFlags = false
	f.StringVar(&cfg.DataDir, "data-dir", cfg.DataDir, "directory of the node's Pebble store (created if missing)")
	f.StringVar(&cfg.GRPCAddr, "grpc-addr", cfg.GRPCAddr, "gRPC listen address (port 0 picks a free one)")
	f.StringVar(&cfg.HTTPAddr, "http-addr", cfg.HTTPAddr, "HTTP listen address for /metrics and /healthz")
	f.StringVar(&cfg.RaftAddr, "raft-addr", cfg.RaftAddr, "raft listen address of the site's nameserver (port 0 picks a free one)")
	f.StringVar(&cfg.NodeID, "node-id", "", "this node's id in the site's shard map (default node-<worker-id>)")
	f.StringVar(&cfg.Join, "join", "", "gRPC address of any node of an existing site to join; empty founds a new one-node site")
	f.DurationVar(&cfg.ReplicaTimeout, "replica-timeout", cfg.ReplicaTimeout, "bound on one write to one replica (a replica that misses it is retried from the journal), on one read from a replica when others remain (the read goes on to them), on one timeline push, and on the wait for each batch of a timeline refill or catch-up (a sibling that sends nothing for it is taken for down and asked again later)")
	f.Uint32Var(&cfg.SiteID, "site-id", cfg.SiteID, "this site's number in ids and versions (0-31)")
	f.StringVar(&cfg.SiteName, "site-name", cfg.SiteName, "this site's name in the site map (other sites' relays know it by it)")
	f.StringVar(&cfg.NATSURL, "nats-url", "", `NATS (JetStream) of this site's replication stream; empty: a node founding a site embeds a nats-server on --nats-addr, a joining node uses its site's; "off" disables replication`)
	f.StringVar(&cfg.NATSAddr, "nats-addr", "127.0.0.1:7393", "client address of the embedded nats-server (port 0 picks a free one)")
	f.DurationVar(&cfg.ReplicationMaxAge, "replication-max-age", 168*time.Hour, "the replication stream keeps messages this long (the outbox, not the stream, guarantees delivery)")
	f.Int64Var(&cfg.ReplicationMaxBytes, "replication-max-bytes", 1<<30, "the replication stream keeps at most this many bytes")
	f.Uint32Var(&cfg.WorkerID, "worker-id", cfg.WorkerID, "this node's number within its site, in ids (0-31)")
	f.IntVar(&cfg.DefaultShards, "shards", cfg.DefaultShards, "shard trees a new site's map is seeded with; every table is forwarded evenly over them by key hash")
	f.StringVar(&tables, "tables", formatTables(node.DefaultTables), "tables a new site's map is seeded with, as name:content or name:index, comma separated")
	f.IntVar(&cfg.Limits.MaxKeyBytes, "max-key-bytes", cfg.Limits.MaxKeyBytes, "largest content key")
	f.IntVar(&cfg.Limits.MaxValueBytes, "max-value-bytes", cfg.Limits.MaxValueBytes, "largest content value")
	f.IntVar(&cfg.Limits.MaxPayloadBytes, "max-payload-bytes", cfg.Limits.MaxPayloadBytes, "largest index payload (at most 255)")
	f.IntVar(&cfg.Limits.MaxBatchMutations, "max-batch-mutations", cfg.Limits.MaxBatchMutations, "most mutations in one Write")
	f.IntVar(&cfg.Limits.MaxBatchBytes, "max-batch-bytes", cfg.Limits.MaxBatchBytes, "most key, value and payload bytes in one Write")
	f.Int64Var(&cfg.MaxWriteBytesInFlight, "max-write-bytes-in-flight", cfg.MaxWriteBytesInFlight, "most key, value and payload bytes of clients' writes the node holds taken and not yet answered, over all calls and write streams; past it a write waits for room until 9/10 of the time before its deadline (without bound if it has none), then gets ResourceExhausted, and a write stream stops reading meanwhile; at least --max-batch-bytes")
	f.IntVar(&cfg.Limits.MaxRangeLimit, "max-range-limit", cfg.Limits.MaxRangeLimit, "largest Range limit and MultiGet key count")
	f.IntVar(&cfg.Limits.MaxOffset, "max-offset", cfg.Limits.MaxOffset, "largest Range offset (page N)")
	f.DurationVar(&cfg.MaxClockSkew, "max-clock-skew", cfg.MaxClockSkew, "how far ahead of the local clock a version or entry id may be")
	f.DurationVar(&cfg.TombstoneGrace, "tombstone-grace", cfg.TombstoneGrace, "how long deletes are kept as tombstones; must exceed the longest replication outage retained")
	f.DurationVar(&cfg.GCInterval, "gc-interval", cfg.GCInterval, "how often expired tombstones are collected")
	f.DurationVar(&cfg.ShutdownTimeout, "shutdown-timeout", cfg.ShutdownTimeout, "how long shutdown waits for in-flight requests")
	f.Int64Var(&cfg.CacheBytes, "cache-bytes", 256<<20, "Pebble block cache size in bytes")
	f.BoolVar(&cfg.RescanVersionBound, "rescan-version-bound", false, "scan the stored content versions for their highest at startup, instead of trusting the bound the store keeps: needed once after the data directory was run by an Aviary build older than that bound (a rollback), which stores versions without raising it")
	f.BoolVar(&cfg.StartRecovering, "start-recovering", false, "refuse this site's clients' writes from the start, as a recovering site does, until the site map lists the site in a state other than active (ops drill failback starts a failed-over site so, then sets it recovering and active)")
	f.BoolVar(&cfg.Timeline, "timeline", true, "hold home timelines in memory (the timeline role: on the site's three timeline rings, working a share of the fan-out queue)")
	f.IntVar(&cfg.Timelines.Capacity, "timeline-capacity", 800, "most entries of one home timeline")
	f.IntVar(&cfg.Timelines.CelebrityFollowers, "celebrity-followers", 10000, "authors with more followers are merged into timelines at read time instead of pushed")
	f.IntVar(&cfg.Timelines.FanoutPartitions, "fanout-partitions", 16, "fan-out queue partitions per site (every node of a site must use the same)")
	f.DurationVar(&cfg.Timelines.FanoutLinger, "fanout-linger", 100*time.Millisecond, "a fan-out worker that found less than a batch queued waits this long before it looks again, so that posts go out together (fewer calls per post, less CPU taken from reads) at the cost of that much delivery latency; 0: look again at once")
	f.DurationVar(&cfg.Timelines.HedgeMin, "hedge-min", cfg.Timelines.HedgeMin, "shortest delay before a timeline read, or a Get routed to another node's replica, is also sent to the next replica (the delay is the recent p95 of such reads, kept apart for timeline reads and Gets)")
	f.DurationVar(&cfg.Timelines.HedgeMax, "hedge-max", cfg.Timelines.HedgeMax, "longest hedge delay")
	f.IntVar(&cfg.Timelines.RepairQueue, "timeline-repair-queue", 4096, "most timeline repairs waiting at once (a replica that missed a push is repaired timeline by timeline from a sibling); a node that misses pushes to more timelines, or is away longer than repairs are retried (about 2m), is caught up whole from its siblings once it answers")
	tlsFlags.Register(f, "this node (role node, its site's name as site)")
	f.StringVar(&tokensFile, "tokens", "", "file of bearer tokens (ops certs token) for clients that cannot present a certificate; needs TLS; read at start")
	f.Float64Var(&cfg.ClientRate, "client-rate", 0, "most calls per second of one client (its certificate's identity, or its IP without TLS); above it, ResourceExhausted; 0: no limit; nodes and relays are not limited")
	f.IntVar(&cfg.ClientBurst, "client-burst", 100, "burst of --client-rate")
	f.BoolVar(&cfg.Pprof, "pprof", false, "serve Go's profiler under /debug/pprof/ on the HTTP address")
	f.StringVar(&logFormat, "log-format", "text", "log format: text or json")
	f.StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn or error")
	envflag.Bind(f, "AVIARY_")
	return cmd
}

func formatTables(ts []shard.TableInfo) string {
	parts := make([]string, len(ts))
	for i, t := range ts {
		parts[i] = t.Name + ":" + t.Kind.String()
	}
	return strings.Join(parts, ",")
}

func parseTables(s string) ([]shard.TableInfo, error) {
	var out []shard.TableInfo
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		name, kind, ok := strings.Cut(part, ":")
		t := shard.TableInfo{Name: name}
		switch {
		case !ok:
			return nil, fmt.Errorf("--tables: %q: want name:content or name:index", part)
		case kind == "content":
			t.Kind = shard.KindContent
		case kind == "index":
			t.Kind = shard.KindIndex
		default:
			return nil, fmt.Errorf("--tables: %q: kind %q is not content or index", part, kind)
		}
		out = append(out, t)
	}
	return out, nil
}

// natsListen is the embedded nats-server's address, if this node starts
// one.
func natsListen(cfg node.Config) string {
	if cfg.NATSURL != "" || cfg.Join != "" {
		return ""
	}
	return cfg.NATSAddr
}
