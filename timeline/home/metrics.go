package home

import (
	"sync/atomic"

	"github.com/aviarydb/aviary/timeline"
	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	posts         prometheus.Counter
	delivery      prometheus.Histogram
	fanoutPushes  prometheus.Counter
	fanoutErrors  prometheus.Counter
	pushesSkipped prometheus.Counter
	replicaPushes prometheus.Counter
	reads         *prometheus.CounterVec
	hedges        prometheus.Counter
	repairs       *prometheus.CounterVec
	behind        prometheus.Gauge
	catchUps      *prometheus.CounterVec
	rebuilds      prometheus.Counter
	refilled      prometheus.Counter
	ringNodes     prometheus.Gauge
	depth         []atomic.Int64 // per queue partition, as last counted here
}

func newMetrics(reg prometheus.Registerer, st *timeline.Store, partitions int) *metrics {
	m := &metrics{
		posts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "aviary_timeline_posts_total", Help: "Posts accepted (recorded and queued for fan-out) by this node."}),
		delivery: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "aviary_timeline_delivery_seconds",
			Help:    "Time from a post's acceptance to its push onto every reachable replica of its followers' timelines, per post delivered by this node's fan-out workers.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 16)}),
		fanoutPushes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "aviary_timeline_fanout_deliveries_total", Help: "Timelines a post was delivered to by this node's fan-out workers (each to its three replicas)."}),
		fanoutErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "aviary_timeline_fanout_errors_total", Help: "Fan-out passes that failed and will be retried."}),
		pushesSkipped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "aviary_timeline_pushes_skipped_total", Help: "Pushes to a timeline node not sent because a push to it failed less than a second ago, or one is out to see whether it answers again; its replicas are repaired from their siblings."}),
		replicaPushes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "aviary_timeline_replica_added_total", Help: "Entries added to timelines held by this node."}),
		reads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "aviary_timeline_reads_total", Help: "Timelines read through this node, by how: replica, rebuilt (from the index) or error."}, []string{"result"}),
		hedges: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "aviary_timeline_hedged_reads_total", Help: "Timeline reads sent to a further replica because the previous had not answered within the hedge delay."}),
		repairs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "aviary_timeline_repairs_total", Help: "Read- and push-repairs of a replica lacking a timeline, by outcome (done; failed: retried, or after the last attempt its node marked behind, unless no sibling held the timeline; a repair of a node taken for down fails without a call; dropped: the queue was full (its node is marked behind, or the repair noted for after its catch-up), or the repair was queued before its node was marked behind for a whole catch-up, which covers it)."}, []string{"outcome"}),
		behind: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "aviary_timeline_nodes_behind", Help: "Timeline nodes this node marked behind (a repair dropped for a full queue, or out of attempts), waiting to be caught up whole from their siblings."}),
		catchUps: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "aviary_timeline_catchups_total", Help: "Catch-ups of a node marked behind, by outcome (done; again: more repairs of it were asked for meanwhile than half the repair queue; failed: a sibling or the node did not answer). A node taken for down is not tried."}, []string{"outcome"}),
		rebuilds: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "aviary_timeline_rebuilds_total", Help: "Timelines rebuilt from the index because no replica held them."}),
		refilled: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "aviary_timeline_refilled_total", Help: "Timelines merged into this node from its siblings (on start and ring changes)."}),
		ringNodes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "aviary_timeline_ring_nodes", Help: "Timeline nodes on the site's rings."}),
		depth: make([]atomic.Int64, partitions),
	}
	// Every outcome is exported from the start, at 0.
	for _, o := range []string{"done", "failed", "dropped"} {
		m.repairs.WithLabelValues(o)
	}
	for _, o := range []string{"done", "again", "failed"} {
		m.catchUps.WithLabelValues(o)
	}
	cs := []prometheus.Collector{m.posts, m.delivery, m.fanoutPushes, m.fanoutErrors, m.pushesSkipped, m.replicaPushes, m.reads, m.hedges, m.repairs, m.behind, m.catchUps, m.rebuilds, m.refilled, m.ringNodes,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "aviary_timeline_fanout_queue_depth", Help: "Posts waiting in the fan-out queue partitions this node works, as last counted."},
			func() float64 {
				var n int64
				for i := range m.depth {
					n += m.depth[i].Load()
				}
				return float64(n)
			}),
	}
	if st != nil {
		cs = append(cs,
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "aviary_timeline_held", Help: "Timelines held in this node's memory."},
				func() float64 { return float64(st.Owners()) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "aviary_timeline_bytes", Help: "Estimated memory of this node's timelines."},
				func() float64 { return float64(st.Bytes()) }))
	}
	if reg != nil {
		for _, c := range cs {
			reg.MustRegister(c)
		}
	}
	return m
}
