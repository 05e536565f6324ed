package node

import (
	"context"
	"time"

	"github.com/aviarydb/aviary/shard"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
)

// metrics are the node's Prometheus metrics.
type metrics struct {
	requests  *prometheus.CounterVec
	latency   *prometheus.HistogramVec
	mutations *prometheus.CounterVec
	collected prometheus.Counter
	// Migration copies: records and bytes exported (as a source) and
	// imported (as a destination), and copies running into this node.
	exported, exportedBytes prometheus.Counter
	copied, copiedBytes     prometheus.Counter
	copies                  prometheus.Gauge
	rateLimited             prometheus.Counter
	readHedges              prometheus.Counter
}

func newMetrics(reg *prometheus.Registry, store *shard.Store) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "aviary_node_grpc_requests_total",
			Help: "gRPC requests handled, by method and status code.",
		}, []string{"method", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "aviary_node_grpc_request_duration_seconds",
			Help:    "gRPC request latency, by method.",
			Buckets: prometheus.ExponentialBuckets(50e-6, 2, 18),
		}, []string{"method"}),
		mutations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "aviary_shard_mutations_total",
			Help: "Mutations applied, by op and outcome (applied, superseded, below-retention).",
		}, []string{"op", "outcome"}),
		collected: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "aviary_shard_tombstones_collected_total",
			Help: "Tombstones deleted after their grace period.",
		}),
		exported: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "aviary_migration_exported_records_total",
			Help: "Records this node sent as the source of migration copies.",
		}),
		exportedBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "aviary_migration_exported_bytes_total",
			Help: "Key and value bytes this node sent as the source of migration copies.",
		}),
		copied: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "aviary_migration_copied_records_total",
			Help: "Records this node applied as the destination of migration copies.",
		}),
		copiedBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "aviary_migration_copied_bytes_total",
			Help: "Key and value bytes this node applied as the destination of migration copies.",
		}),
		copies: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "aviary_migration_copies_running",
			Help: "Migration copies running into this node.",
		}),
		rateLimited: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "aviary_rate_limited_calls_total",
			Help: "Calls refused because their client was above --client-rate.",
		}),
		readHedges: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "aviary_node_read_hedges_total",
			Help: "Times a routed Get, its replica not having answered within the hedge delay, also asked the next replica.",
		}),
	}
	reg.MustRegister(m.requests, m.latency, m.mutations, m.collected, storeCollector{store},
		m.exported, m.exportedBytes, m.copied, m.copiedBytes, m.copies, m.rateLimited, m.readHedges)
	return m
}

// unary records every unary call's code and latency.
func (m *metrics) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	start := time.Now()
	resp, err := h(ctx, req)
	m.latency.WithLabelValues(info.FullMethod).Observe(time.Since(start).Seconds())
	m.requests.WithLabelValues(info.FullMethod, status.Code(err).String()).Inc()
	return resp, err
}

var (
	descWALSyncs = prometheus.NewDesc("aviary_shard_wal_syncs_total",
		"Fsyncs of the write-ahead log; fewer than durable batches under concurrency (group commit).", nil, nil)
	descWALSync = prometheus.NewDesc("aviary_shard_wal_fsync_seconds",
		"Time each fsync of the write-ahead log took (Pebble's own measurement; every durable write waits for one). The bounds are some of Pebble's: exact to 5 ms, then its exponential ones (0.0109, 0.0275, ... 10 s).", nil, nil)
	descDisk = prometheus.NewDesc("aviary_shard_disk_bytes",
		"Bytes of sstables and WAL on disk.", nil, nil)
	descMemtable = prometheus.NewDesc("aviary_shard_memtable_bytes",
		"Bytes in memtables.", nil, nil)
	descCompactions = prometheus.NewDesc("aviary_shard_compactions_total",
		"Compactions completed.", nil, nil)
	descShards = prometheus.NewDesc("aviary_shard_shards",
		"Physical shards held by the node.", nil, nil)
	descJobs = prometheus.NewDesc("aviary_router_jobs",
		"Router jobs (journaled writes a replica still lacks), pending or in the error queue; counted up to 100000.", []string{"queue"}, nil)
)

// storeCollector reads the store's figures at scrape time.
type storeCollector struct{ s *shard.Store }

func (c storeCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descWALSyncs
	ch <- descWALSync
	ch <- descDisk
	ch <- descMemtable
	ch <- descCompactions
	ch <- descShards
	ch <- descJobs
}

func (c storeCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.s.Stats()
	ch <- prometheus.MustNewConstMetric(descWALSyncs, prometheus.CounterValue, float64(st.WALSyncs))
	if st.WALSyncBuckets != nil {
		ch <- prometheus.MustNewConstHistogram(descWALSync, st.WALSyncs, st.WALSyncSeconds, st.WALSyncBuckets)
	}
	ch <- prometheus.MustNewConstMetric(descDisk, prometheus.GaugeValue, float64(st.DiskBytes))
	ch <- prometheus.MustNewConstMetric(descMemtable, prometheus.GaugeValue, float64(st.MemTableBytes))
	ch <- prometheus.MustNewConstMetric(descCompactions, prometheus.CounterValue, float64(st.Compactions))
	ch <- prometheus.MustNewConstMetric(descShards, prometheus.GaugeValue, float64(len(c.s.Shards())))
	for _, q := range []struct {
		name  string
		error bool
	}{{"pending", false}, {"error", true}} {
		if n, err := c.s.CountJobs(q.error, 100000); err == nil {
			ch <- prometheus.MustNewConstMetric(descJobs, prometheus.GaugeValue, float64(n), q.name)
		}
	}
}

func defaultRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}
