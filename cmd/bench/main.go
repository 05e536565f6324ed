// Command bench is a load generator for an Aviary storage node. It drives a
// node over real gRPC (every client connection made by netx.Dial) with
// --concurrency clients spread round-robin over --conns connections, and
// prints for every workload the throughput and the p50, p99, p999 and
// maximum latency of the operations, and the errors. Each workload is warmed
// up for --warmup (not measured), then measured for --duration.
//
// It measures these workloads:
//
//   - ping: one grpc.health.v1 Check per operation, through the node's
//     interceptors and the same connections: a unary round trip with no
//     storage work and no fsync, so the ceiling of the unary workloads at
//     this concurrency on this machine (put and get print their
//     throughput as a fraction of it).
//   - put: one Put RPC of a new random key per operation, acknowledged
//     after fsync.
//   - putstream: the same Puts as messages on write streams
//     (client.Stream), one per connection shared by its clients; each
//     client still waits for its own Put's answer.
//   - batch100: one Write RPC of 100 Puts per operation (ops/s are batches/s;
//     mut/s are mutations/s).
//   - get: --keys keys are preloaded with Write batches of 1000, then Gets of
//     uniformly random keys (the p99 target is under 1 ms).
//   - range20: --owners owners' --entries-per-owner index entries are
//     preloaded with Write batches of Appends with explicit ids spread over
//     the last two months (so a Range sometimes crosses a month partition),
//     then Ranges of limit 20 for uniformly random owners.
//   - router (not run by default): durable writes through the routing layer
//     of a 3-node site, and how fast a shard map change reaches every node.
//     For each --replicas value R (default 1,3) a fresh site runs in this
//     process on 127.0.0.1, with its data under the run's temporary
//     directory: node-0 founds it with 8 shard trees (each a replicating
//     root over one physical shard on node-0), node-1 and node-2 join it,
//     and one map change gives every tree R readable replicas (R-1 more
//     physical shards, on node-1 and node-2); the run waits until every node
//     routes with that map version. The put workload then runs with the
//     --concurrency clients spread round-robin over --conns connections to
//     each of the 3 nodes (client i writes through node i mod 3, which
//     routes the write: journal, then every replica), once with the default
//     consistency (ONE: acknowledged once journaled and applied by one
//     replica; the others are written after) and once with CONSISTENCY_ALL
//     (applied by every replica), as rows "router-put r=R ONE" and "r=R ALL";
//     every acknowledgement is checked to name R replicas. Between the two,
//     the replication backlog is drained (its time is printed if noticeable).
//     After the last site the ratio of throughputs r=R/r=<first R> is printed
//     per consistency (the target is r=3/r=1 >= 0.5 for durable writes). On
//     the site with the most replicas, 200 changes (each a create_table) are
//     then proposed one at a time through node-1, with a Watch stream open
//     on every node, and each is timed from just before Propose until its
//     map version has arrived on all 3 streams: row "map-propagation
//     3 nodes", latency only. Each site is shut down (every node's Run
//     cancelled and awaited) and its data removed before the next starts.
//     router ignores --raw and cannot be used with --addr.
//   - migrate (not run by default): online shard migration (ops migrate,
//     run in this process) on a fresh in-process 2-node site whose map is
//     seeded with 2 shard trees over every table, both on node-0. First
//     --migrate-records records of 17-byte keys and --migrate-value-bytes
//     random bytes are loaded into the tree rep-000 (physical shard
//     default-000) through node-0's router: Writes of up to 1000 Puts whose
//     keys were drawn at random and kept if the map forwards their hash to
//     rep-000. Then "ops migrate default-000 --to node-1 --rate 0" runs with
//     no other load: row "migrate-copy unlimited" gives the records and MB
//     (10^6 bytes as the copy counts them: key, value, table name and a
//     15-byte header per record; "kv MB/s" counts keys and values alone)
//     the destination reports (ShardAdmin.CopyState), the copy phase's time
//     (from the audit log: from the change that sets the migration's state
//     copying, which attaches the destination, to the one that sets
//     copied, just after the last page), the time the whole ops command
//     took, and records/s and MB/s over the copy phase; a comment line
//     gives the time in every state. Then, for each --migrate-rates value
//     R (default ops.DefaultRate), --migrate-writers clients write durable
//     single Puts of random keys (so over every tree, half on the one that
//     moves) through --conns connections to each node for --warmup and
//     --duration with the site idle ("migrate-put idle"), then again with
//     "ops migrate <rep-000's shard> --to <the other node> --rate R"
//     started as the measurement starts ("migrate-put R"), and the ratio of
//     their p99s (and of p50 and ops/s) is printed, with how much of the
//     window the migration and its copy covered, and the copy row of that
//     migration. A line "# targets:" ends it: unthrottled copy >= 50 MB/s,
//     foreground p99 during a migration <= 2x idle. migrate ignores --raw,
//     --concurrency, --keys and --value-bytes and cannot be used with --addr.
//   - relay (not run by default): cross-site replication. Three in-process
//     one-node sites, each with its embedded nats-server and its relay.
//     --relay-writers clients write durable Puts of 100-byte values (over
//     one shared write stream, or a unary call each with
//     --relay-stream=false) at
//     site-a at --relay-rate writes/s (paced) for --duration; about 100
//     writes a second (whatever the rate) are read at site-b every
//     millisecond until they are there: their lag, from the acknowledgement
//     at site-a to the read at site-b. Then each
//     --relay-steps rate in turn, until site-a no longer accepts 95% of it
//     or the lag p99 passes 1s (or a write or sample fails): the sustained
//     rate is the highest accepted at site-a with site-b keeping up. Raw
//     JetStream publish+consume of 200,000 256-byte messages on site-a's
//     nats-server runs before the warmup and again after the steps, and the
//     ratio is sustained over the higher of the two. Targets: lag p99 <
//     100ms at 3,000 writes/s; sustained >= 30% of raw JetStream.
//   - timeline (not run by default): home timelines on an in-process 3-node
//     site against Redis lists driven the same way (redis-server is
//     installed with apt-get if missing and started on a free port): a
//     --timeline-users Zipf follow graph with --timeline-follows follows per
//     user; posts at --timeline-post-rate with --timeline-readers readers,
//     delivery latency (acceptance to every follower's timeline) and read
//     latency, with the readers back to back, again with reads paced at
//     --timeline-read-rate, and once more with a health Check (no read
//     work) in place of each read, the floor of a read's latency under the
//     fan-out; then read throughput one and
//     --timeline-many timelines per call; the ratios Aviary/Redis and the
//     issue's targets. See
//     docs/benchmarks.md.
//
// Unless --raw=false, put, putstream, batch100 and get are also run
// against bare Pebble in a fresh directory next to the node's data (so on
// the same disk), with the same concurrency and sync setting: synced
// db.Set (for put and putstream alike), synced 100-Set batches, and db.Get
// after an unsynced bulk load and a flush. The ratio
// node/raw of their throughputs is what the node (gRPC, versioning,
// journal, key locks, the read-before-write of writes not written blind)
// costs. range20 has no raw baseline.
//
// Without --addr, the node runs in this process on 127.0.0.1 in a temporary
// directory under --dir and is shut down at the end; clients and node then
// share the CPUs. Results are printed as a table as each workload finishes,
// after a header describing the machine and the exact command; --json adds
// them as JSON lines at the end. SIGINT stops the run early and prints what
// was measured.
//
// The figures in docs/benchmarks.md were measured with:
//
//	go run ./cmd/bench --duration 5s
//
// and those of the router workload with:
//
//	go run ./cmd/bench --workloads router --duration 10s
//
// and those of the migrate workload with:
//
//	go run ./cmd/bench --workloads migrate
//
// and those of the relay workload with:
//
//	go run ./cmd/bench --workloads relay
//
// and those of the timeline workload with:
//
//	go run ./cmd/bench --workloads timeline --duration 10s --warmup 2s
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"runtime/trace"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	pb "github.com/aviarydb/aviary/api/aviarypb"
	"github.com/aviarydb/aviary/internal/envflag"
	"github.com/aviarydb/aviary/node"
	"github.com/aviarydb/aviary/ops"
	"github.com/aviarydb/aviary/shard"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"google.golang.org/grpc"
)

func main() {
	if err := newCommand().Execute(); err != nil {
		os.Exit(1)
	}
}

// config holds the command's flags.
type config struct {
	Addr            string
	Dir             string
	Duration        time.Duration
	Warmup          time.Duration
	Concurrency     int
	Conns           int
	Workloads       []string
	Keys            int
	ValueBytes      int
	Owners          int
	EntriesPerOwner int
	JSON            bool
	Raw             bool
	// ReadRate is the paced rate of get and range20's second run (0: half
	// the back-to-back rate; negative: none).
	ReadRate int
	Replicas []int // router: replica counts, one site each
	// migrate: the records loaded into the moved shard, their value size,
	// the foreground writers and the throttles measured.
	MigrateRecords    int
	MigrateValueBytes int
	MigrateWriters    int
	MigrateRates      []string
	// relay: the steady rate at site A, the rates tried for the highest
	// sustained one, the writers at A.
	RelayRate    int
	RelaySteps   []int
	RelayWriters int
	RelayStream  bool
	// timeline: users, follows per user, posts/s, readers, timelines per
	// call of the many-timelines reads, capacity, and whether Redis is
	// measured beside.
	TimelineUsers    int
	TimelineFollows  int
	TimelinePostRate int
	TimelineReaders  int
	TimelineReadRate int
	TimelineMany     int
	TimelineCapacity int
	TimelineRedis    bool
	TimelineProfile  string
	TimelineLinger   time.Duration
	TimelinePacked   bool
	// CPUProfile, if set, receives a CPU profile of the whole run.
	CPUProfile string
	// Trace, if set, receives a Go execution trace of the whole run.
	Trace string
	// MemProfile, if set, receives an allocation profile of the whole run.
	MemProfile string
	// TLS runs the in-process nodes and the bench's connections with
	// mutual TLS (a CA and certificates made for the run).
	TLS bool
}

func (c *config) validate() error {
	switch {
	case c.Duration <= 0:
		return fmt.Errorf("--duration %s: must be positive", c.Duration)
	case c.ReadRate < -1 || c.ReadRate > maxPacedRate:
		return fmt.Errorf("--read-rate %d: want ops/s up to %d, 0 (half the back-to-back rate) or -1 (no paced run)", c.ReadRate, maxPacedRate)
	case c.Warmup < 0:
		return fmt.Errorf("--warmup %s: must not be negative", c.Warmup)
	case c.Concurrency < 1:
		return fmt.Errorf("--concurrency %d: must be at least 1", c.Concurrency)
	case c.Conns < 1:
		return fmt.Errorf("--conns %d: must be at least 1", c.Conns)
	case c.Keys < 1:
		return fmt.Errorf("--keys %d: must be at least 1", c.Keys)
	case c.ValueBytes < 1:
		return fmt.Errorf("--value-bytes %d: must be at least 1", c.ValueBytes)
	case c.Owners < 1:
		return fmt.Errorf("--owners %d: must be at least 1", c.Owners)
	case c.EntriesPerOwner < 1:
		return fmt.Errorf("--entries-per-owner %d: must be at least 1", c.EntriesPerOwner)
	case c.MigrateRecords < 1:
		return fmt.Errorf("--migrate-records %d: must be at least 1", c.MigrateRecords)
	case c.MigrateValueBytes < 1 || c.MigrateValueBytes > maxLoadBatchBytes-keyLen:
		return fmt.Errorf("--migrate-value-bytes %d: must be from 1 to %d", c.MigrateValueBytes, maxLoadBatchBytes-keyLen)
	case c.MigrateWriters < 1:
		return fmt.Errorf("--migrate-writers %d: must be at least 1", c.MigrateWriters)
	}
	if c.CPUProfile != "" && c.TimelineProfile != "" {
		return errors.New("--cpuprofile and --timeline-profile: give one (Go runs one CPU profile at a time)")
	}
	all := strings.Join(append(workloadNames[:len(workloadNames):len(workloadNames)], routerWorkload, migrateWorkload, relayWorkload, timelineWorkload), ",")
	for _, w := range c.Workloads {
		if _, ok := workloadByName(w); !ok && w != routerWorkload && w != migrateWorkload && w != relayWorkload && w != timelineWorkload {
			return fmt.Errorf("--workloads: unknown workload %q: want some of %s", w, all)
		}
	}
	if c.TLS && slices.Contains(c.Workloads, relayWorkload) {
		return fmt.Errorf("--tls: the relay workload runs plaintext only (its relays and NATS are not given certificates yet)")
	}
	if c.TLS && c.Addr != "" {
		return fmt.Errorf("--tls with --addr: give the external node's certificates to it; --tls secures in-process nodes only")
	}
	if len(c.Workloads) == 0 {
		return fmt.Errorf("--workloads: none given: want some of %s", all)
	}
	if len(c.Replicas) == 0 {
		return fmt.Errorf("--replicas: none given: want replica counts from 1 to %d", maxSiteReplicas)
	}
	for i, r := range c.Replicas {
		switch {
		case r < 1 || r > maxSiteReplicas:
			return fmt.Errorf("--replicas %d: must be from 1 to %d (one replica per node of the %d-node site)", r, maxSiteReplicas, siteNodes)
		case slices.Contains(c.Replicas[:i], r):
			return fmt.Errorf("--replicas: %d given twice", r)
		}
	}
	if router, _ := hasRouter(c.Workloads); router && c.Addr != "" {
		return fmt.Errorf("--workloads %s: starts its own in-process sites; it cannot measure --addr %s", routerWorkload, c.Addr)
	}
	if slices.Contains(c.Workloads, timelineWorkload) {
		switch {
		case c.Addr != "":
			return fmt.Errorf("--workloads %s: starts its own in-process site; it cannot measure --addr %s", timelineWorkload, c.Addr)
		case c.TimelineUsers < 2 || c.TimelineFollows < 1 || c.TimelineFollows >= c.TimelineUsers:
			return fmt.Errorf("--timeline-users %d, --timeline-follows %d: want at least 2 users and 1 to users-1 follows", c.TimelineUsers, c.TimelineFollows)
		case c.TimelinePostRate < 1 || c.TimelineReaders < 1 || c.TimelineMany < 1 || c.TimelineMany > 1000:
			return fmt.Errorf("--timeline-post-rate %d, --timeline-readers %d, --timeline-many %d: want at least 1 (many at most 1000)", c.TimelinePostRate, c.TimelineReaders, c.TimelineMany)
		case c.TimelineCapacity < 20:
			return fmt.Errorf("--timeline-capacity %d: must be at least 20 (reads take 20)", c.TimelineCapacity)
		case c.TimelineReadRate < -1:
			return fmt.Errorf("--timeline-read-rate %d: want reads/s, 0 (half the back-to-back rate) or -1 (no paced phase)", c.TimelineReadRate)
		}
	}
	if slices.Contains(c.Workloads, relayWorkload) {
		if c.Addr != "" {
			return fmt.Errorf("--workloads %s: starts its own in-process sites; it cannot measure --addr %s", relayWorkload, c.Addr)
		}
		if c.RelayRate < 1 || c.RelayWriters < 1 {
			return fmt.Errorf("--relay-rate %d, --relay-writers %d: must be at least 1", c.RelayRate, c.RelayWriters)
		}
		for _, r := range c.RelaySteps {
			if r < 1 {
				return fmt.Errorf("--relay-steps: %d: rates must be at least 1", r)
			}
		}
	}
	if slices.Contains(c.Workloads, migrateWorkload) {
		if c.Addr != "" {
			return fmt.Errorf("--workloads %s: starts its own in-process site; it cannot measure --addr %s", migrateWorkload, c.Addr)
		}
		if len(c.MigrateRates) == 0 {
			return fmt.Errorf("--migrate-rates: none given: want copy throttles such as %s", ops.DefaultRate)
		}
		for i, r := range c.MigrateRates {
			if _, err := parseCopyRate(r); err != nil {
				return fmt.Errorf("--migrate-rates: %w", err)
			}
			if slices.Contains(c.MigrateRates[:i], r) {
				return fmt.Errorf("--migrate-rates: %s given twice", r)
			}
		}
	}
	return nil
}

func newCommand() *cobra.Command {
	cfg := config{Raw: true}
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure an Aviary node's throughput and latency over gRPC",
		Long: `Measure an Aviary storage node over real gRPC: --concurrency clients over
--conns connections run each workload (ping, put, putstream, batch100, get,
range20) for a warmup and then --duration, and the throughput, latency
quantiles and errors are printed as a table. put, putstream (the same Puts
over write streams), batch100 and get are also run against bare
Pebble on the same disk with the same sync setting, and the ratio node/raw of
the throughputs is printed. get and range20 then run once more against the
node with their clients paced on one schedule (--read-rate, target
"paced"): latency counted from the schedule's time, and a comment line with
the latency from send to answer. ping is a health Check per call, a
unary round trip with no storage work: put and get print their throughput
as a fraction of it.

The router workload (not run by default) starts, for each --replicas value
R, a fresh in-process 3-node site whose shard trees have R replicas each,
and measures durable Puts routed by all 3 nodes with consistency ONE and
ALL, the throughput ratios r=R/r=<first>, and (on the site with the most
replicas) how long a shard map change takes to reach every node.

The migrate workload (not run by default) starts a fresh in-process 2-node
site with 2 shard trees, loads --migrate-records records (values of
--migrate-value-bytes bytes) into the tree rep-000 (shard default-000 on node-0)
through the router, times an unthrottled online migration of that shard to
node-1 (ops migrate --rate 0, with no other load: records, MB and MB/s of
its copy phase, and the whole migration's time), then for each
--migrate-rates value measures --migrate-writers durable Puts over all the
trees for --duration with the site idle and again while the shard moves
back at that rate, and prints the p99 ratio migrating/idle and whether the
targets are met (copy >= 50 MB/s unthrottled, p99 <= 2x idle).

Without --addr the node runs in this process, in a temporary directory under
--dir, and is removed at the end. SIGINT stops early and prints what was
measured.

Every flag can be set by an environment variable named AVIARY_BENCH_ and the
flag name in capitals with '-' as '_' (--duration: AVIARY_BENCH_DURATION).`,
		Example: `  go run ./cmd/bench --duration 5s
  go run ./cmd/bench --workloads get --keys 100000 --json
  go run ./cmd/bench --workloads router --duration 10s
  go run ./cmd/bench --workloads migrate
  go run ./cmd/bench --workloads migrate --migrate-rates 16MB/s,8MB/s,4MB/s
  go run ./cmd/bench --addr 127.0.0.1:7390 --dir /var/lib/aviary-bench`,
		SilenceUsage: true,
		Args:         cobra.NoArgs,
		PreRunE: func(cmd *cobra.Command, _ []string) error {
			return envflag.Apply(cmd.Flags())
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := cfg.validate(); err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			go func() {
				<-ctx.Done()
				stop() // a second signal kills at once
			}()
			cmdline := append([]string{filepath.Base(os.Args[0])}, quoteArgs(cmd.Flags())...)
			return run(ctx, cfg, cmd.OutOrStdout(), strings.Join(cmdline, " "), settings(cmd.Flags()))
		},
	}
	f := cmd.Flags()
	f.SortFlags = false
	f.StringVar(&cfg.Addr, "addr", "", "gRPC address of the node to measure; empty: start one in this process on 127.0.0.1")
	f.StringVar(&cfg.Dir, "dir", os.TempDir(), "parent of the temporary data directories (the in-process node's and raw Pebble's, so on one disk)")
	f.DurationVar(&cfg.Duration, "duration", 10*time.Second, "measured time per workload and target")
	f.DurationVar(&cfg.Warmup, "warmup", time.Second, "unmeasured warmup before each measurement")
	f.IntVar(&cfg.Concurrency, "concurrency", 64, "concurrent clients, each looping until the deadline")
	f.IntVar(&cfg.Conns, "conns", 4, "gRPC connections; clients are spread over them round-robin")
	f.StringSliceVar(&cfg.Workloads, "workloads", workloadNames, "workloads to run, comma separated: ping, put, putstream, batch100, get, range20, router (not by default: a 3-node site per --replicas value), migrate (not by default: online migration on a 2-node site)")
	f.IntVar(&cfg.Keys, "keys", 1000000, "keys preloaded for get")
	f.IntVar(&cfg.ValueBytes, "value-bytes", 128, "bytes of every value written (random, so incompressible)")
	f.IntVar(&cfg.Owners, "owners", 10000, "owners preloaded for range20")
	f.IntVar(&cfg.EntriesPerOwner, "entries-per-owner", 40, "index entries preloaded per owner for range20, spread over two months")
	f.BoolVar(&cfg.JSON, "json", false, "also print the results as JSON lines at the end")
	f.BoolVar(&cfg.Raw, "raw", true, "also run the raw Pebble baselines and print the ratios node/raw")
	f.IntVar(&cfg.ReadRate, "read-rate", 0, "get, range20: ops/s of a second run against the node, paced (its clients share a schedule; latency counts from the scheduled time), printed as target paced; 0: half the ops/s the back-to-back run reached; -1: no paced run")
	f.IntSliceVar(&cfg.Replicas, "replicas", []int{1, 3}, "router: replicas per shard tree to measure, comma separated, each 1 to 3; a fresh 3-node site for each")
	f.IntVar(&cfg.MigrateRecords, "migrate-records", 1000000, "migrate: records loaded into the shard that moves")
	f.IntVar(&cfg.MigrateValueBytes, "migrate-value-bytes", 100, "migrate: bytes of every value loaded and written (random, so incompressible)")
	f.IntVar(&cfg.MigrateWriters, "migrate-writers", 16, "migrate: concurrent foreground writers (durable single Puts) measured idle and during each throttled migration")
	f.StringSliceVar(&cfg.MigrateRates, "migrate-rates", []string{ops.DefaultRate}, "migrate: copy throttles (ops migrate --rate) to measure foreground writes under, comma separated, e.g. 16MB/s,8MB/s,4MB/s")
	f.IntVar(&cfg.RelayRate, "relay-rate", 3000, "relay: steady writes/s at site-a whose lag to site-b is measured")
	f.IntSliceVar(&cfg.RelaySteps, "relay-steps", []int{2000, 4000, 8000, 11000, 15000, 20000, 25000, 30000, 35000, 40000, 45000, 50000, 55000, 60000, 70000, 80000}, "relay: rising writes/s tried for the highest rate site-b keeps up with")
	f.IntVar(&cfg.RelayWriters, "relay-writers", 256, "relay: concurrent writers at site-a, each paced at its share of the rate and waiting for its answers: together they offer at most writers / latency writes/s, so the highest steps need enough of them")
	f.BoolVar(&cfg.RelayStream, "relay-stream", true, "relay: the writers share one write stream to site-a (client.Stream, for high rates); false: a unary Put each")
	f.IntVar(&cfg.TimelineUsers, "timeline-users", 5000, "timeline: users (each has a home timeline in memory)")
	f.IntVar(&cfg.TimelineFollows, "timeline-follows", 120, "timeline: users each user follows, drawn from a Zipf distribution (so the average followers per author)")
	f.IntVar(&cfg.TimelinePostRate, "timeline-post-rate", 350, "timeline: posts/s (paced, random authors) during the fan-out phase")
	f.IntVar(&cfg.TimelineReaders, "timeline-readers", 16, "timeline: concurrent readers, in the fan-out phases and the read phases")
	f.IntVar(&cfg.TimelineReadRate, "timeline-read-rate", 0, "timeline: reads/s of the second fan-out phase, paced (its readers share a schedule; latency counts from the scheduled time); 0: half the reads/s the first phase's back-to-back readers reached; -1: no second phase")
	f.IntVar(&cfg.TimelineMany, "timeline-many", 20, "timeline: timelines per call in the many-timelines read phase")
	f.IntVar(&cfg.TimelineCapacity, "timeline-capacity", 800, "timeline: timeline capacity (Aviary's and the Redis LTRIM)")
	f.DurationVar(&cfg.TimelineLinger, "timeline-linger", 100*time.Millisecond, "timeline: the nodes' fan-out linger (cmd/node --fanout-linger, same default)")
	f.BoolVar(&cfg.TimelinePacked, "timeline-packed", true, "timeline: Aviary's reads ask for packed results (ReadRequest.packed: the entries as columns, no message per entry for the client, nor for a node that holds the timeline); false: one message per entry")
	f.StringVar(&cfg.TimelineProfile, "timeline-profile", "", "timeline: write a CPU profile of the measured part of Aviary's fan-out phase (clients and nodes) to this file; not with --cpuprofile")
	f.BoolVar(&cfg.TimelineRedis, "timeline-redis", true, "timeline: also drive Redis lists the same way (installs redis-server with apt-get if missing) and print the ratios")
	f.BoolVar(&cfg.TLS, "tls", false, "run the in-process nodes and every connection with mutual TLS 1.3 (certificates made for the run), to measure its cost; not with the relay workload")
	f.StringVar(&cfg.CPUProfile, "cpuprofile", "", "write a CPU profile of the whole run (clients and in-process nodes) to this file")
	f.StringVar(&cfg.MemProfile, "memprofile", "", "write an allocation profile of the whole run to this file at its end (go tool pprof -sample_index=alloc_space: what allocates, and so drives the GC)")
	f.StringVar(&cfg.Trace, "trace", "", "write a Go execution trace of the whole run to this file (go tool trace: where goroutines wait); keep --duration short, traces grow fast")
	envflag.Bind(f, "AVIARY_BENCH_")
	return cmd
}

// quoteArgs returns the flags given on the command line, as given.
func quoteArgs(fs *pflag.FlagSet) []string {
	var out []string
	fs.Visit(func(fl *pflag.Flag) {
		out = append(out, "--"+fl.Name+"="+shellQuote(flagString(fl)))
	})
	return out
}

// settings returns every flag's effective value, whether from the command
// line, the environment or its default.
func settings(fs *pflag.FlagSet) string {
	var out []string
	fs.VisitAll(func(fl *pflag.Flag) {
		if fl.Name != "help" {
			out = append(out, "--"+fl.Name+"="+shellQuote(flagString(fl)))
		}
	})
	return strings.Join(out, " ")
}

func flagString(fl *pflag.Flag) string {
	if sv, ok := fl.Value.(pflag.SliceValue); ok {
		return strings.Join(sv.GetSlice(), ",")
	}
	return fl.Value.String()
}

// startProfile starts a CPU profile into a new file at path; stop ends
// it and closes the file.
func startProfile(path string) (stop func() error, err error) {
	return startRecording("cpu profile", path, pprof.StartCPUProfile, pprof.StopCPUProfile)
}

// startRecording starts what start records (a CPU profile, an execution
// trace) into a new file at path; stop ends it with end and closes the
// file.
func startRecording(what, path string, start func(io.Writer) error, end func()) (stop func() error, err error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := start(f); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return func() error {
		end()
		return f.Close()
	}, nil
}

// shellQuote quotes s for a POSIX shell if it needs it.
func shellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./:,=@%+", r))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// workload is one benchmark: how to prepare and run it against the node and,
// if it has a baseline, against raw Pebble.
type workload struct {
	name      string
	mutsPerOp int  // mutations per operation; 0 for reads
	paced     bool // also run paced (--read-rate)
	node      func(b *bench, ctx context.Context) (func(int) opFunc, error)
	raw       func(b *bench, ctx context.Context, r *rawDB) (func(int) opFunc, error) // nil: none
}

var workloads = []workload{
	{"ping", 0, false, (*bench).nodePing, nil},
	{"put", 1, false, (*bench).nodePut, (*bench).rawPut},
	{"putstream", 1, false, (*bench).nodePutStream, (*bench).rawPut},
	{"batch100", batchMutations, false, (*bench).nodeBatch100, (*bench).rawBatch100},
	{"get", 0, true, (*bench).nodeGet, (*bench).rawGet},
	{"range20", 0, true, (*bench).nodeRange20, nil},
}

func workloadByName(name string) (workload, bool) {
	for _, w := range workloads {
		if w.name == name {
			return w, true
		}
	}
	return workload{}, false
}

// bench is one run of the command.
type bench struct {
	cfg     config
	out     io.Writer
	mu      sync.Mutex // serialises writes to out
	root    string     // temporary directory of this run
	addr    string     // gRPC address of the node measured
	conns   []*grpc.ClientConn
	clients []pb.DataClient
	closers []func() error // closed at the end, last first
	records []any          // for --json
	errors  uint64
	wcol    int     // width of the table's workload column
	ping    *result // the ping workload's, if it ran
}

// client returns the Data client of client goroutine w.
func (b *bench) client(w int) pb.DataClient { return b.clients[w%len(b.clients)] }

func (b *bench) printf(format string, args ...any) {
	b.mu.Lock()
	defer b.mu.Unlock()
	fmt.Fprintf(b.out, format, args...)
}

// run runs the configured workloads and prints the results to out. It
// returns an error if the setup failed or any operation failed.
func run(ctx context.Context, cfg config, out io.Writer, cmdline, settings string) (err error) {
	if cfg.TLS {
		if runTLS, err = newBenchTLS(cfg.Dir); err != nil {
			return err
		}
		defer os.RemoveAll(runTLS.dir)
	}
	if cfg.CPUProfile != "" {
		stop, err := startProfile(cfg.CPUProfile)
		if err != nil {
			return err
		}
		defer func() { err = errors.Join(err, stop()) }()
	}
	if cfg.MemProfile != "" {
		defer func() {
			f, ferr := os.Create(cfg.MemProfile)
			if ferr == nil {
				ferr = errors.Join(pprof.Lookup("allocs").WriteTo(f, 0), f.Close())
			}
			err = errors.Join(err, ferr)
		}()
	}
	if cfg.Trace != "" {
		stop, err := startRecording("trace", cfg.Trace, trace.Start, trace.Stop)
		if err != nil {
			return err
		}
		defer func() { err = errors.Join(err, stop()) }()
	}
	b := &bench{cfg: cfg, out: out, wcol: 10}
	router, others := hasRouter(cfg.Workloads)
	if router {
		b.wcol = max(b.wcol, len(propagationName), len(routerPutName))
	}
	if slices.Contains(cfg.Workloads, migrateWorkload) {
		b.wcol = max(b.wcol, len(migrateCopyName), len(migratePutName))
	}
	if b.root, err = os.MkdirTemp(cfg.Dir, "aviary-bench-"); err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	defer func() {
		if e := os.RemoveAll(b.root); e != nil {
			b.printf("# removing %s: %v\n", b.root, e)
		}
	}()

	addr, nodeDesc := cfg.Addr, "external, at "+cfg.Addr
	if !others {
		nodeDesc = "" // router or migrate only: they start their own sites
	}
	if others && addr == "" {
		ncfg := node.Config{DataDir: filepath.Join(b.root, "node"), GRPCAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", RaftAddr: "127.0.0.1:0"}
		ncfg.EnsureDefaults()
		if err := secure(&ncfg); err != nil {
			return err
		}
		n, err := node.New(ctx, ncfg)
		if err != nil {
			return fmt.Errorf("bench: start node: %w", err)
		}
		nodeCtx, stopNode := context.WithCancel(context.Background())
		stopped := make(chan error, 1)
		go func() { stopped <- n.Run(nodeCtx) }()
		defer func() {
			stopNode()
			if e := <-stopped; e != nil {
				b.printf("# node stopped with an error: %v\n", e)
				err = errors.Join(err, e)
			}
		}()
		if err := n.WaitReady(ctx); err != nil {
			return fmt.Errorf("bench: node: %w", err)
		}
		addr = n.GRPCAddr()
		nodeDesc = fmt.Sprintf("in-process at %s, data in %s, %d default shards, %d MiB cache (shares the CPUs with the clients)",
			addr, ncfg.DataDir, ncfg.DefaultShards, cacheBytes()>>20)
	}
	for range cfg.Conns {
		if !others {
			break
		}
		cc, err := dial(addr)
		if err != nil {
			return fmt.Errorf("bench: %w", err)
		}
		b.conns = append(b.conns, cc)
		b.clients = append(b.clients, pb.NewDataClient(cc))
	}
	b.addr = addr
	defer func() {
		for i := len(b.closers) - 1; i >= 0; i-- {
			_ = b.closers[i]()
		}
		for _, cc := range b.conns {
			_ = cc.Close()
		}
	}()

	b.header(cmdline, settings, nodeDesc, others)
	b.row("workload", "target", "conc", "ops/s", "mut/s", "p50", "p99", "p999", "max", "errors")
	var shutdownErrs []error
	for _, name := range cfg.Workloads {
		if ctx.Err() != nil {
			break
		}
		if name == routerWorkload {
			if err := b.runRouter(ctx); err != nil {
				shutdownErrs = append(shutdownErrs, err)
			}
			continue
		}
		if name == migrateWorkload {
			if err := b.runMigrate(ctx); err != nil {
				shutdownErrs = append(shutdownErrs, err)
			}
			continue
		}
		if name == timelineWorkload {
			err := runTimeline(ctx, timelineConfig{Users: cfg.TimelineUsers, Follows: cfg.TimelineFollows, PostRate: cfg.TimelinePostRate,
				Readers: cfg.TimelineReaders, Many: cfg.TimelineMany, Capacity: cfg.TimelineCapacity, Warmup: cfg.Warmup, Duration: cfg.Duration,
				Redis: cfg.TimelineRedis, Seed: 1, Profile: cfg.TimelineProfile, Linger: cfg.TimelineLinger, ReadRate: cfg.TimelineReadRate, Packed: cfg.TimelinePacked}, printer{b})
			if err != nil {
				shutdownErrs = append(shutdownErrs, err)
			}
			continue
		}
		if name == relayWorkload {
			var buf strings.Builder
			err := runRelay(ctx, relayConfig{Rate: cfg.RelayRate, Duration: cfg.Duration, Steps: cfg.RelaySteps, Writers: cfg.RelayWriters, Stream: cfg.RelayStream, RawMsgs: 200_000}, &buf)
			b.printf("%s", buf.String())
			if err != nil {
				shutdownErrs = append(shutdownErrs, err)
			}
			continue
		}
		w, _ := workloadByName(name)
		b.runWorkload(ctx, w)
	}
	if ctx.Err() != nil {
		b.printf("# interrupted (%v): the results above are all that was measured\n", context.Cause(ctx))
	}
	if cfg.JSON {
		b.printf("\n")
		for _, r := range b.records {
			line, err := json.Marshal(r)
			if err != nil {
				return fmt.Errorf("bench: %w", err)
			}
			b.printf("%s\n", line)
		}
	}
	if b.errors > 0 {
		shutdownErrs = append(shutdownErrs, fmt.Errorf("bench: %d operations failed (see the errors above)", b.errors))
	}
	return errors.Join(shutdownErrs...)
}

// maxPacedRate bounds --read-rate: far above what a node serves, and
// slots a nanosecond or more apart.
const maxPacedRate = 10_000_000

// runWorkload prepares and measures one workload on the node, then on raw
// Pebble, and prints the rows and the ratio.
func (b *bench) runWorkload(ctx context.Context, w workload) {
	c := &b.cfg
	newOp, err := w.node(b, ctx)
	if err != nil {
		if ctx.Err() == nil {
			b.report(failed(w, "node", c.Concurrency, err))
		}
		return
	}
	nr := runLoop(ctx, w.name, "node", c.Concurrency, w.mutsPerOp, c.Warmup, c.Duration, newOp)
	if nr != nil {
		b.report(nr)
	}
	if w.name == "ping" {
		b.ping = nr
		return
	}
	if nr != nil && b.ping != nil && b.ping.OpsPerSec() > 0 && (w.name == "put" || w.name == "get") {
		v := nr.OpsPerSec() / b.ping.OpsPerSec()
		b.printf("# %s: %.2f of ping's calls/s (the same unary round trips with no storage work: the ceiling of one call per operation here)\n", w.name, v)
		b.records = append(b.records, jsonRatio{Type: "ratio", Workload: w.name, Of: "ping", Ratio: &v})
	}
	if w.paced && c.ReadRate >= 0 && nr != nil && ctx.Err() == nil {
		// Reads again, paced: their latency under a load the node
		// carries, rather than under the clients' own saturation of it.
		rate := c.ReadRate
		if rate == 0 {
			rate = max(1, int(nr.OpsPerSec()/2))
		}
		if pr := runPaced(ctx, w.name, "paced", c.Concurrency, 0, rate, c.Warmup, c.Duration, newOp); pr != nil {
			b.report(pr)
		} else if ctx.Err() == nil {
			b.printf("#   %s (paced): no operation at %d/s fell in the measured time\n", w.name, rate)
		}
	}
	if !c.Raw || ctx.Err() != nil {
		return
	}
	if w.raw == nil {
		b.ratio(w.name, nr, nil)
		return
	}
	r, err := openRaw(filepath.Join(b.root, "raw-"+w.name))
	if err != nil {
		b.report(failed(w, "raw", c.Concurrency, err))
		return
	}
	defer func() {
		if err := r.close(); err != nil {
			b.printf("# %s (raw): close: %v\n", w.name, err)
		}
	}()
	if newOp, err = w.raw(b, ctx, r); err != nil {
		if ctx.Err() == nil {
			b.report(failed(w, "raw", c.Concurrency, err))
		}
		return
	}
	rr := runLoop(ctx, w.name, "raw", c.Concurrency, w.mutsPerOp, c.Warmup, c.Duration, newOp)
	if rr != nil {
		b.report(rr)
		b.ratio(w.name, nr, rr)
	}
}

// failed is the result of a workload whose preparation failed.
func failed(w workload, target string, conc int, err error) *result {
	return &result{Workload: w.name, Target: target, Concurrency: conc, MutsPerOp: w.mutsPerOp,
		Errors: 1, Hist: NewHistogram(), ErrSamples: map[string]uint64{"setup: " + err.Error(): 1}}
}

// rowFormat is a table row; the workload column is b.wcol wide.
const rowFormat = "%-*s %-7s %5v %10s %10s %9s %9s %9s %9s %7v\n"

// row prints a table row.
func (b *bench) row(workload, target string, conc, opsPerSec, mutsPerSec, p50, p99, p999, maxv, errs any) {
	b.printf(rowFormat, b.wcol, workload, target, conc, opsPerSec, mutsPerSec, p50, p99, p999, maxv, errs)
}

// report prints a result's row, its errors and whether it was cut short,
// and keeps it for --json.
func (b *bench) report(r *result) {
	h := r.Hist
	q := func(v int64) string {
		if h.Count() == 0 {
			return "-"
		}
		return fmtDur(v)
	}
	ops, mut := fmt.Sprintf("%.0f", r.OpsPerSec()), "-"
	if r.MutsPerOp > 0 {
		mut = fmt.Sprintf("%.0f", r.OpsPerSec()*float64(r.MutsPerOp))
	}
	opsPerSec := new(r.OpsPerSec())
	if r.LatencyOnly {
		ops, opsPerSec = "-", nil
	}
	b.row(r.Workload, r.Target, r.Concurrency, ops, mut,
		q(h.Quantile(0.5)), q(h.Quantile(0.99)), q(h.Quantile(0.999)), q(h.Max()), r.Errors)
	if sv := r.Service; sv != nil && sv.Count() > 0 {
		b.printf("#   %s (%s): from send to answer (not counting the wait for the schedule's time): p50 %s, p99 %s, p999 %s\n",
			r.Workload, r.Target, fmtDur(sv.Quantile(0.5)), fmtDur(sv.Quantile(0.99)), fmtDur(sv.Quantile(0.999)))
	}
	if r.Interrupted {
		b.printf("#   %s (%s): interrupted after %s of measurement\n", r.Workload, r.Target, r.Elapsed.Round(time.Millisecond))
	}
	msgs := make([]string, 0, len(r.ErrSamples))
	for m := range r.ErrSamples {
		msgs = append(msgs, m)
	}
	sort.Slice(msgs, func(i, j int) bool { return r.ErrSamples[msgs[i]] > r.ErrSamples[msgs[j]] })
	for _, m := range msgs {
		b.printf("#   %s (%s) error, %d times: %s\n", r.Workload, r.Target, r.ErrSamples[m], m)
	}
	if shown := sum(r.ErrSamples); shown < r.Errors {
		b.printf("#   %s (%s): %d more errors with other messages\n", r.Workload, r.Target, r.Errors-shown)
	}
	b.errors += r.Errors
	b.records = append(b.records, jsonResult{
		Type: "result", Workload: r.Workload, Target: r.Target, Concurrency: r.Concurrency,
		Replicas: r.Replicas, Consistency: r.Consistency, Nodes: r.Nodes,
		Ops: r.Ops, OpsPerSec: opsPerSec, MutationsPerSec: r.OpsPerSec() * float64(r.MutsPerOp),
		P50Ns: h.Quantile(0.5), P99Ns: h.Quantile(0.99), P999Ns: h.Quantile(0.999), MaxNs: h.Max(), MeanNs: h.Mean(),
		Errors: r.Errors, ErrorSamples: r.ErrSamples, ElapsedSec: r.Elapsed.Seconds(), Interrupted: r.Interrupted,
	})
}

// ratio prints the throughput ratio node/raw, or "-" without a baseline.
func (b *bench) ratio(name string, node, raw *result) {
	rec := jsonRatio{Type: "ratio", Workload: name}
	text := "-"
	if node != nil && raw != nil && raw.OpsPerSec() > 0 {
		v := node.OpsPerSec() / raw.OpsPerSec()
		rec.Ratio = &v
		text = fmt.Sprintf("%.2f", v)
	}
	b.printf("%-*s %-7s node/raw = %s\n", b.wcol, name, "ratio", text)
	b.records = append(b.records, rec)
}

func sum(m map[string]uint64) uint64 {
	var n uint64
	for _, v := range m {
		n += v
	}
	return n
}

// jsonResult is a result as a JSON line.
type jsonResult struct {
	Type            string            `json:"type"`
	Workload        string            `json:"workload"`
	Target          string            `json:"target"`
	Replicas        int               `json:"replicas,omitempty"`    // router
	Consistency     string            `json:"consistency,omitempty"` // router-put
	Nodes           int               `json:"nodes,omitempty"`       // router
	Concurrency     int               `json:"concurrency"`
	Ops             uint64            `json:"ops"`
	OpsPerSec       *float64          `json:"ops_per_sec,omitempty"` // absent for map-propagation
	MutationsPerSec float64           `json:"mutations_per_sec,omitempty"`
	P50Ns           int64             `json:"p50_ns"`
	P99Ns           int64             `json:"p99_ns"`
	P999Ns          int64             `json:"p999_ns"`
	MaxNs           int64             `json:"max_ns"`
	MeanNs          float64           `json:"mean_ns"`
	Errors          uint64            `json:"errors"`
	ErrorSamples    map[string]uint64 `json:"error_samples,omitempty"`
	ElapsedSec      float64           `json:"elapsed_sec"`
	Interrupted     bool              `json:"interrupted,omitempty"`
}

// jsonRatio is a throughput ratio as a JSON line: node/raw, or for
// router-put, Of ("r=3/r=1") at Consistency. Ratio is null without a
// baseline.
type jsonRatio struct {
	Type        string   `json:"type"`
	Workload    string   `json:"workload"`
	Of          string   `json:"of,omitempty"`
	Consistency string   `json:"consistency,omitempty"`
	Ratio       *float64 `json:"ratio"`
}

// jsonEnv is the environment header as a JSON line.
type jsonEnv struct {
	Type       string `json:"type"`
	Command    string `json:"command"`
	Settings   string `json:"settings"`
	Go         string `json:"go"`
	GOMAXPROCS int    `json:"gomaxprocs"`
	CPUs       int    `json:"cpus"`
	CPUModel   string `json:"cpu_model,omitempty"`
	LoadAvg    string `json:"load_avg,omitempty"`
	Dir        string `json:"dir"`
	Filesystem string `json:"filesystem"`
	Node       string `json:"node"`
	Site       string `json:"site,omitempty"`    // router
	Migrate    string `json:"migrate,omitempty"` // migrate
	Pebble     string `json:"pebble"`
}

// header prints the environment: the command, Go, the CPUs, the data
// directory and its file system, and what is measured.
func (b *bench) header(cmdline, settings, nodeDesc string, others bool) {
	env := jsonEnv{
		Type: "env", Command: cmdline, Settings: settings,
		Go:         fmt.Sprintf("%s %s/%s", runtime.Version(), runtime.GOOS, runtime.GOARCH),
		GOMAXPROCS: runtime.GOMAXPROCS(0), CPUs: runtime.NumCPU(), CPUModel: cpuModel(), LoadAvg: loadAvg(),
		Dir: b.root, Filesystem: filesystem(b.root), Node: nodeDesc, Pebble: moduleVersion("github.com/cockroachdb/pebble/v2"),
	}
	if router, _ := hasRouter(b.cfg.Workloads); router {
		env.Site = fmt.Sprintf("router: for each of --replicas %s a fresh in-process %d-node site in %s (node-0 founds it with %d shard trees, "+
			"the others join), every tree with that many replicas, %d MiB cache per node; clients over %d connections to each node, "+
			"consistency ONE and ALL; map propagation: %d changes through node-1",
			joinInts(b.cfg.Replicas), siteNodes, filepath.Join(b.root, "site-r<replicas>"), siteShards, cacheBytes()>>20, b.cfg.Conns, propagationChanges)
	}
	if slices.Contains(b.cfg.Workloads, migrateWorkload) {
		env.Migrate = fmt.Sprintf("a fresh in-process %d-node site in %s (node-0 founds it with %d shard trees over every table, node-1 joins), %d MiB cache per node; "+
			"%d records of %d-byte keys and %d-byte values loaded into %s (%s on node-0) through node-0's router; "+
			"copy: ops migrate %s --to node-1 --rate %s with no other load, its copy phase timed from the change that sets state copying to the one that sets copied (audit log), "+
			"MB = 10^6 bytes as the copy counts them (key, value, table name, 15-byte header); "+
			"then per --migrate-rates value (%s): %d writers of durable single Puts of random keys (over all trees) through %d connections to each node, "+
			"%s warmup and %s measured idle, then again while the shard moves to the other node at that rate (ops migrate starts as the measurement starts, after the warmup)",
			migrateNodes, filepath.Join(b.root, "site-migrate"), migrateShards, cacheBytes()>>20,
			b.cfg.MigrateRecords, keyLen, b.cfg.MigrateValueBytes, migrateTree, migrateSource, migrateSource, unthrottled,
			strings.Join(b.cfg.MigrateRates, ","), b.cfg.MigrateWriters, b.cfg.Conns, b.cfg.Warmup, b.cfg.Duration)
	}
	cpus := fmt.Sprintf("GOMAXPROCS %d, %d CPUs", env.GOMAXPROCS, env.CPUs)
	if env.CPUModel != "" {
		cpus += " (" + env.CPUModel + ")"
	}
	b.printf("# aviary bench, %s\n", time.Now().UTC().Format(time.RFC3339))
	b.printf("# command:    %s\n", env.Command)
	b.printf("# settings:   %s\n", env.Settings)
	b.printf("# go:         %s, %s\n", env.Go, cpus)
	if env.LoadAvg != "" {
		b.printf("# load:       %s (1, 5, 15 minutes) at the start: other processes share the machine\n", env.LoadAvg)
	}
	b.printf("# data dir:   %s\n", env.Dir)
	b.printf("# filesystem: %s\n", env.Filesystem)
	if env.Node != "" {
		b.printf("# node:       %s\n", env.Node)
	}
	if env.Site != "" {
		b.printf("# site:       %s\n", env.Site)
	}
	if env.Migrate != "" {
		b.printf("# migrate:    %s\n", env.Migrate)
	}
	if b.cfg.Raw && others {
		b.printf("# raw:        pebble %s in %s, FormatNewest, %d MiB cache, %d MiB memtable, writes with pebble.Sync\n",
			env.Pebble, filepath.Join(b.root, "raw-<workload>"), cacheBytes()>>20, memTableBytes()>>20)
	}
	conns := fmt.Sprintf("%d gRPC connections", b.cfg.Conns)
	if env.Site != "" {
		conns += fmt.Sprintf(" (router: to each of the %d nodes, %d in all)", siteNodes, siteNodes*b.cfg.Conns)
	}
	if others || env.Site != "" {
		b.printf("# clients:    %d over %s; %s warmup, then %s per workload and target; %d-byte random values\n",
			b.cfg.Concurrency, conns, b.cfg.Warmup, b.cfg.Duration, b.cfg.ValueBytes)
	}
	b.printf("# latency is per operation (batch100: per 100-Put Write; map-propagation: per change, from Propose until on every node); ops/s counts successful operations\n")
	b.records = append(b.records, env)
}

// cacheBytes and memTableBytes are the store's defaults, which the in-process
// node and raw Pebble both use.
func cacheBytes() int64 {
	var o shard.Options
	o.EnsureDefaults()
	return o.CacheBytes
}

func memTableBytes() uint64 {
	var o shard.Options
	o.EnsureDefaults()
	return o.MemTableBytes
}

// filesystem describes the file system holding dir, from df: device, type,
// size, free space and mount point; "unknown" if df fails.
func filesystem(dir string) string {
	for _, args := range [][]string{{"-PhT", dir}, {"-Ph", dir}} {
		outb, err := exec.Command("df", args...).Output()
		if err != nil {
			continue
		}
		lines := strings.Split(strings.TrimSpace(string(outb)), "\n")
		if len(lines) < 2 {
			continue
		}
		f := strings.Fields(lines[len(lines)-1])
		switch len(f) {
		case 7: // Filesystem Type Size Used Avail Use% Mounted
			return fmt.Sprintf("%s, %s, %s total, %s available, mounted on %s", f[0], f[1], f[2], f[4], f[6])
		case 6: // Filesystem Size Used Avail Use% Mounted
			return fmt.Sprintf("%s, %s total, %s available, mounted on %s", f[0], f[1], f[3], f[5])
		}
		return lines[len(lines)-1]
	}
	return "unknown (df failed)"
}

// cpuModel is the CPU model from /proc/cpuinfo, or "".
func cpuModel() string {
	data, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(data), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// loadAvg is the 1, 5 and 15 minute load averages from /proc/loadavg, or "".
func loadAvg() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(data))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}

// moduleVersion is the version of a module built into this binary.
func moduleVersion(path string) string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, m := range bi.Deps {
			if m.Path == path {
				return m.Version
			}
		}
	}
	return "(unknown version)"
}

// fmtDur formats nanoseconds with three significant digits or so.
func fmtDur(ns int64) string {
	switch {
	case ns < 1e3:
		return fmt.Sprintf("%dns", ns)
	case ns < 1e6:
		return fmt.Sprintf("%.1fµs", float64(ns)/1e3)
	case ns < 1e9:
		return fmt.Sprintf("%.2fms", float64(ns)/1e6)
	}
	return fmt.Sprintf("%.2fs", float64(ns)/1e9)
}

// joinInts formats ints as a comma-separated list.
func joinInts(v []int) string {
	s := make([]string, len(v))
	for i, x := range v {
		s[i] = fmt.Sprint(x)
	}
	return strings.Join(s, ",")
}
