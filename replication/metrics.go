package replication

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// relayMetrics are the relay's Prometheus metrics, labelled by source
// site. Counters and the histogram are kept as vectors; the gauges, which
// depend on the time of the scrape (lag in seconds, stalled), are computed
// from Status when collected.
type relayMetrics struct {
	r            *Relay
	applied      *prometheus.CounterVec
	errors       *prometheus.CounterVec
	gaps         *prometheus.CounterVec
	applySeconds *prometheus.HistogramVec

	lagMessages, lagSeconds, stalled, connected *prometheus.Desc
}

func newRelayMetrics(r *Relay) *relayMetrics {
	label := []string{"source"}
	return &relayMetrics{
		r: r,
		applied: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "aviary_relay_applied_entries_total",
			Help: "Entries of the source site applied at this site (not counting redeliveries skipped as applied already).",
		}, label),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "aviary_relay_errors_total",
			Help: "Failed applies, undecodable messages, and failures of the source's NATS connection, consumer or buckets.",
		}, label),
		gaps: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "aviary_relay_gaps_total",
			Help: "Gaps found in the source's entries (missing after this site's watermark), each asked to be republished.",
		}, label),
		applySeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "aviary_relay_apply_batch_seconds",
			Help:    "Duration of one ApplyRemote call: the messages of one origin node in a fetched batch.",
			Buckets: prometheus.ExponentialBuckets(100e-6, 2, 16),
		}, label),
		lagMessages: prometheus.NewDesc("aviary_relay_lag_messages",
			"Messages of the source not yet applied at this site, as its consumer last reported.", label, nil),
		lagSeconds: prometheus.NewDesc("aviary_relay_lag_seconds",
			"Age of the newest origin timestamp applied from the source (entry or heartbeat); grows while the path is stalled.", label, nil),
		stalled: prometheus.NewDesc("aviary_relay_stalled",
			"1 if nothing from the source, not even a heartbeat, has been applied for the stall-after duration.", label, nil),
		connected: prometheus.NewDesc("aviary_relay_connected",
			"1 if the relay is connected to the source's NATS.", label, nil),
	}
}

func (m *relayMetrics) register(reg prometheus.Registerer) error {
	var errs []error
	for _, c := range []prometheus.Collector{m.applied, m.errors, m.gaps, m.applySeconds, gauges{m}} {
		if err := reg.Register(c); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// pathMetrics are the series of one path. A path keeps its own, so that
// a path still stopping after forget no longer counts.
type pathMetrics struct {
	applied, errors, gaps prometheus.Counter
	applySeconds          prometheus.Observer
}

func (m *relayMetrics) path(source string) pathMetrics {
	return pathMetrics{
		applied:      m.applied.WithLabelValues(source),
		errors:       m.errors.WithLabelValues(source),
		gaps:         m.gaps.WithLabelValues(source),
		applySeconds: m.applySeconds.WithLabelValues(source),
	}
}

// forget drops the series of a source the relay no longer relays.
func (m *relayMetrics) forget(source string) {
	m.applied.DeleteLabelValues(source)
	m.errors.DeleteLabelValues(source)
	m.gaps.DeleteLabelValues(source)
	m.applySeconds.DeleteLabelValues(source)
}

// gauges collects the per-source gauges from the relay's status.
type gauges struct{ m *relayMetrics }

func (g gauges) Describe(ch chan<- *prometheus.Desc) {
	ch <- g.m.lagMessages
	ch <- g.m.lagSeconds
	ch <- g.m.stalled
	ch <- g.m.connected
}

func (g gauges) Collect(ch chan<- prometheus.Metric) {
	for _, st := range g.m.r.Status() {
		ch <- prometheus.MustNewConstMetric(g.m.lagMessages, prometheus.GaugeValue, float64(st.LagMessages), st.Source)
		ch <- prometheus.MustNewConstMetric(g.m.lagSeconds, prometheus.GaugeValue, st.LagSeconds, st.Source)
		ch <- prometheus.MustNewConstMetric(g.m.stalled, prometheus.GaugeValue, bool01(st.Stalled), st.Source)
		ch <- prometheus.MustNewConstMetric(g.m.connected, prometheus.GaugeValue, bool01(st.Connected), st.Source)
	}
}

func bool01(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
