package shard

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/aviarydb/aviary/ids"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// MaxPayloadBytes is the hard upper bound of an index entry's payload.
const MaxPayloadBytes = 255

// MaxTableNameBytes bounds a table name (it is length-prefixed by one byte in
// keys).
const MaxTableNameBytes = 64

// Limits bound what a single request may carry. The zero value of a field
// means its default; see EnsureDefaults.
type Limits struct {
	// MaxKeyBytes bounds a content key. Default 1024.
	MaxKeyBytes int
	// MaxValueBytes bounds a content value. Default 1 MiB.
	MaxValueBytes int
	// MaxPayloadBytes bounds an index payload. Default and maximum 255.
	MaxPayloadBytes int
	// MaxBatchMutations bounds the mutations of one batch. Default 1000.
	MaxBatchMutations int
	// MaxBatchBytes bounds the keys, values and payloads of one batch.
	// Default 8 MiB.
	MaxBatchBytes int
	// MaxRangeLimit bounds the limit of a Range or the keys of a MultiGet.
	// Default 1000.
	MaxRangeLimit int
	// MaxOffset bounds the page offset of a Range. Default 100000 (a zero
	// means the default, so offsets cannot be switched off).
	MaxOffset int
}

// EnsureDefaults fills zero fields with their defaults.
func (l *Limits) EnsureDefaults() {
	if l.MaxKeyBytes == 0 {
		l.MaxKeyBytes = 1024
	}
	if l.MaxValueBytes == 0 {
		l.MaxValueBytes = 1 << 20
	}
	if l.MaxPayloadBytes == 0 {
		l.MaxPayloadBytes = MaxPayloadBytes
	}
	if l.MaxBatchMutations == 0 {
		l.MaxBatchMutations = 1000
	}
	if l.MaxBatchBytes == 0 {
		l.MaxBatchBytes = 8 << 20
	}
	if l.MaxRangeLimit == 0 {
		l.MaxRangeLimit = 1000
	}
	if l.MaxOffset == 0 {
		l.MaxOffset = 100000
	}
}

// Validate reports a limit outside its allowed range.
func (l *Limits) Validate() error {
	switch {
	case l.MaxKeyBytes < 1 || l.MaxKeyBytes > 64<<10:
		return fmt.Errorf("max key bytes %d: must be in [1, 65536]", l.MaxKeyBytes)
	case l.MaxValueBytes < 1 || l.MaxValueBytes > 64<<20:
		return fmt.Errorf("max value bytes %d: must be in [1, 64 MiB]", l.MaxValueBytes)
	case l.MaxPayloadBytes < 0 || l.MaxPayloadBytes > MaxPayloadBytes:
		return fmt.Errorf("max payload bytes %d: must be in [0, %d]", l.MaxPayloadBytes, MaxPayloadBytes)
	case l.MaxBatchMutations < 1:
		return fmt.Errorf("max batch mutations %d: must be at least 1", l.MaxBatchMutations)
	case l.MaxBatchBytes < l.MaxKeyBytes+l.MaxValueBytes:
		return fmt.Errorf("max batch bytes %d: must hold one put of the largest key and value (%d)", l.MaxBatchBytes, l.MaxKeyBytes+l.MaxValueBytes)
	case l.MaxRangeLimit < 1:
		return fmt.Errorf("max range limit %d: must be at least 1", l.MaxRangeLimit)
	case l.MaxOffset < 0:
		return fmt.Errorf("max offset %d: must not be negative", l.MaxOffset)
	}
	return nil
}

// Options configure a Store. The zero value is usable.
type Options struct {
	// Limits bound requests; zero fields take their defaults.
	Limits Limits
	// Clock gives wall time for id validation and tombstone collection.
	// Default ids.SystemClock.
	Clock ids.Clock
	// MaxClockAhead is how far in the future an entry id may lie.
	// Default 10s.
	MaxClockAhead time.Duration
	// Logger receives the store's logs. Default: discards.
	Logger *slog.Logger
	// RescanVersionBound discards the persisted bound on content versions
	// at Open and scans the content records for it again (bound.go). Needed
	// once after the database was written by a build older than the bound
	// (a rollback): that build stored versions without raising it.
	RescanVersionBound bool
	// FS is the file system Pebble uses. Default vfs.Default; tests use
	// vfs.NewMem or wrappers that inject faults.
	FS vfs.FS
	// CacheBytes is the size of Pebble's block cache. Default 256 MiB.
	CacheBytes int64
	// MemTableBytes is the size of one Pebble memtable. Default 64 MiB.
	// (A mutation that is not written blind (bound.go) first looks up the
	// record it may replace, so the memtable's seek cost matters: short
	// put-only runs were faster with 16 MiB, full runs of cmd/bench were
	// not; see docs/benchmarks.md.)
	MemTableBytes uint64
}

// EnsureDefaults fills zero fields with their defaults.
func (o *Options) EnsureDefaults() {
	o.Limits.EnsureDefaults()
	if o.Clock == nil {
		o.Clock = ids.SystemClock{}
	}
	if o.MaxClockAhead == 0 {
		o.MaxClockAhead = 10 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.FS == nil {
		o.FS = vfs.Default
	}
	if o.CacheBytes == 0 {
		o.CacheBytes = 256 << 20
	}
	if o.MemTableBytes == 0 {
		o.MemTableBytes = 64 << 20
	}
}

// Validate reports an option outside its allowed range.
func (o *Options) Validate() error {
	if err := o.Limits.Validate(); err != nil {
		return fmt.Errorf("shard: %w", err)
	}
	if o.MaxClockAhead < 0 {
		return fmt.Errorf("shard: max clock ahead %s: must not be negative", o.MaxClockAhead)
	}
	return nil
}
