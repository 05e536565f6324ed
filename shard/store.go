package shard

import (
	"context"
	"encoding/binary"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/bloom"
	dto "github.com/prometheus/client_model/go"
)

// TableKind says whether a table holds content or an index.
type TableKind uint8

// Table kinds.
const (
	KindContent TableKind = 1
	KindIndex   TableKind = 2
)

func (k TableKind) String() string {
	switch k {
	case KindContent:
		return "content"
	case KindIndex:
		return "index"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// TableInfo describes a table.
type TableInfo struct {
	Name string
	Kind TableKind
}

// ShardInfo describes a physical shard.
type ShardInfo struct {
	Name    string
	Num     uint32 // local to this store; never reused
	Created time.Time
}

// numStripes is the number of key-lock stripes. A mutation reads the current
// record and writes the winner under its stripe's lock, held until the batch
// is visible, so two writers of one key never interleave.
const numStripes = 1 << 16

// stripe is one key-lock stripe.
type stripe struct {
	sync.Mutex
	// bound is at or above the version of every content record whose key
	// falls in this stripe (bound.go). Guarded by the mutex.
	bound uint64
}

// Store is one Pebble database holding a node's physical shards. It is safe
// for concurrent use.
type Store struct {
	opts Options
	db   *pebble.DB

	stripes [numStripes]stripe

	// bound is the persisted bound on content versions (bound.go).
	bound versionBound

	journal struct {
		seq atomic.Uint64 // last journal sequence number
		mu  sync.Mutex
		// jobs counts the jobs (pending or in the error queue) of each
		// entry recorded by this process, so that finishing a job need not
		// scan for the entry's others. Entries of earlier processes are
		// absent and checked by a scan.
		jobs map[uint64]int
		// outbox holds the seqs of the entries with an outbox marker
		// (outbox.go), loaded at Open.
		outbox outboxSet
		// committing holds the seqs of outbox entries whose batch is not
		// yet known to be visible: OutboxEntries returns nothing at or
		// past the lowest, so that a later entry visible first is not
		// published (and its position passed) before an earlier one.
		committing map[uint64]struct{}
	}

	// floors caches the index tables' retention floors (maint.go), read
	// by every index mutation.
	floors struct {
		mu sync.RWMutex
		m  map[floorKey]uint32
	}

	// scans counts long reads (digests, tombstone collection) that hold a
	// Pebble iterator without holding mu. Close waits for them.
	scans sync.WaitGroup

	// exports are the open Exports. Close releases their snapshots, which
	// Pebble requires before it closes.
	exports struct {
		mu   sync.Mutex
		open map[*Export]struct{}
	}

	// mu guards the schema. Every mutation holds it for reading until it is
	// durable, so creating or dropping a shard, and a retention drop, never
	// interleave with an apply.
	mu struct {
		sync.RWMutex
		closed    bool
		shards    map[string]ShardInfo
		tables    map[string]TableInfo
		nextShard uint32
	}
}

var nextShardKey = metaKey('N', "")

// Open opens (creating if needed) the store in dir.
func Open(dir string, opts Options) (*Store, error) {
	opts.EnsureDefaults()
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	cache := pebble.NewCache(opts.CacheBytes)
	defer cache.Unref()
	popts := &pebble.Options{
		FS:                 opts.FS,
		Cache:              cache,
		MemTableSize:       opts.MemTableBytes,
		FormatMajorVersion: pebble.FormatNewest,
		Logger:             pebbleLogger{opts.Logger},
	}
	// Bloom filters let a read of an absent key (index mutations, and
	// content writes not written blind, read the record they may replace)
	// skip sstables without searching them.
	for i := range popts.Levels {
		popts.Levels[i].FilterPolicy = bloom.FilterPolicy(10)
	}
	popts.EnsureDefaults()
	db, err := pebble.Open(dir, popts)
	if err != nil {
		return nil, fmt.Errorf("shard: open %s: %w", dir, err)
	}
	s := &Store{opts: opts, db: db}
	s.floors.m = map[floorKey]uint32{}
	if err := s.loadMeta(); err != nil {
		_ = db.Close()
		return nil, err
	}
	if err := s.loadJournalSeq(); err != nil {
		_ = db.Close()
		return nil, err
	}
	if err := s.loadBound(); err != nil {
		_ = db.Close()
		return nil, err
	}
	return s, nil
}

func (s *Store) loadMeta() error {
	s.mu.shards = map[string]ShardInfo{}
	s.mu.tables = map[string]TableInfo{}
	s.mu.nextShard = 1
	start, end := shardSpan(0)
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: start, UpperBound: end})
	if err != nil {
		return err
	}
	defer it.Close()
	for it.First(); it.Valid(); it.Next() {
		k, v := it.Key(), it.Value()
		if len(k) < shardPrefixLen+1 {
			return fmt.Errorf("shard: corrupt metadata key %q", k)
		}
		name := string(k[shardPrefixLen+1:])
		switch k[shardPrefixLen] {
		case metaShard:
			if len(v) != 12 {
				return fmt.Errorf("shard: corrupt shard record %q", name)
			}
			s.mu.shards[name] = ShardInfo{
				Name:    name,
				Num:     binary.BigEndian.Uint32(v),
				Created: time.UnixMilli(int64(binary.BigEndian.Uint64(v[4:]))).UTC(),
			}
		case metaTable:
			if len(v) != 1 || (TableKind(v[0]) != KindContent && TableKind(v[0]) != KindIndex) {
				return fmt.Errorf("shard: corrupt table record %q", name)
			}
			s.mu.tables[name] = TableInfo{Name: name, Kind: TableKind(v[0])}
		case 'N':
			if len(v) != 4 {
				return fmt.Errorf("shard: corrupt shard counter")
			}
			s.mu.nextShard = binary.BigEndian.Uint32(v)
		}
	}
	return it.Error()
}

// Close closes the store. It waits for in-flight mutations, reads and scans,
// and releases the snapshots of Exports left open (their later calls fail
// with ErrClosed).
func (s *Store) Close() error {
	s.mu.Lock()
	if s.mu.closed {
		s.mu.Unlock()
		return ErrClosed
	}
	s.mu.closed = true
	s.mu.Unlock()
	s.scans.Wait()
	s.bound.wg.Wait()
	s.closeExports()
	return s.db.Close()
}

// beginScan registers a long read that iterates without holding mu: it
// returns the shard's number and an iterator over a consistent view of its
// span, or an error. The caller calls done when finished.
func (s *Store) beginScan(shard string) (num uint32, it *pebble.Iterator, done func(), err error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.mu.closed {
		return 0, nil, nil, ErrClosed
	}
	// Without a shard: every shard, after the metadata (shard 0).
	lo, _ := shardSpan(1)
	var hi []byte
	if shard != "" {
		sh, err := s.shardLocked(shard)
		if err != nil {
			return 0, nil, nil, err
		}
		num = sh.Num
		lo, hi = shardSpan(num)
	}
	it, err = s.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return 0, nil, nil, err
	}
	s.scans.Add(1)
	return num, it, func() { _ = it.Close(); s.scans.Done() }, nil
}

// Limits returns the limits the store enforces.
func (s *Store) Limits() Limits { return s.opts.Limits }

// validName checks a shard or table name: 1 to 64 bytes of [A-Za-z0-9_.-].
func validName(what, name string) error {
	if name == "" {
		return fmt.Errorf("%w: %s name is empty", ErrInvalid, what)
	}
	if len(name) > MaxTableNameBytes {
		return fmt.Errorf("%w: %s name is %d bytes, limit is %d", ErrInvalid, what, len(name), MaxTableNameBytes)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.') {
			return fmt.Errorf("%w: %s name %q: byte %d is not one of [A-Za-z0-9_.-]", ErrInvalid, what, name, i)
		}
	}
	return nil
}

// CreateTable registers a table. Creating an existing table with the same
// kind is a no-op; with another kind it is ErrExists.
func (s *Store) CreateTable(ctx context.Context, name string, kind TableKind) error {
	if err := validName("table", name); err != nil {
		return err
	}
	if kind != KindContent && kind != KindIndex {
		return fmt.Errorf("%w: table kind %d", ErrInvalid, kind)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.closed {
		return ErrClosed
	}
	if t, ok := s.mu.tables[name]; ok {
		if t.Kind == kind {
			return nil
		}
		return fmt.Errorf("%w: table %q is a %s table", ErrExists, name, t.Kind)
	}
	if err := s.db.Set(metaKey(metaTable, name), []byte{byte(kind)}, pebble.Sync); err != nil {
		return fmt.Errorf("shard: create table %q: %w", name, err)
	}
	s.mu.tables[name] = TableInfo{Name: name, Kind: kind}
	return nil
}

// Tables lists the tables, sorted by name.
func (s *Store) Tables() []TableInfo {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]TableInfo, 0, len(s.mu.tables))
	for _, t := range s.mu.tables {
		out = append(out, t)
	}
	slices.SortFunc(out, func(a, b TableInfo) int { return cmpString(a.Name, b.Name) })
	return out
}

// Table returns the named table.
func (s *Store) Table(name string) (TableInfo, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.tableLocked(name)
}

func (s *Store) tableLocked(name string) (TableInfo, error) {
	t, ok := s.mu.tables[name]
	if !ok {
		if name == "" {
			return t, fmt.Errorf("%w: table name is empty", ErrInvalid)
		}
		return t, fmt.Errorf("%w: %q", ErrTableNotFound, name)
	}
	return t, nil
}

func (s *Store) shardLocked(name string) (ShardInfo, error) {
	sh, ok := s.mu.shards[name]
	if !ok {
		if name == "" {
			return sh, fmt.Errorf("%w: shard name is empty", ErrInvalid)
		}
		return sh, fmt.Errorf("%w: %q", ErrShardNotFound, name)
	}
	return sh, nil
}

// CreateShard creates an empty physical shard. It fails with ErrExists if
// the name is taken.
func (s *Store) CreateShard(ctx context.Context, name string) (ShardInfo, error) {
	if err := validName("shard", name); err != nil {
		return ShardInfo{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.closed {
		return ShardInfo{}, ErrClosed
	}
	if sh, ok := s.mu.shards[name]; ok {
		return sh, fmt.Errorf("%w: shard %q", ErrExists, name)
	}
	info := ShardInfo{Name: name, Num: s.mu.nextShard, Created: s.opts.Clock.Now().UTC().Truncate(time.Millisecond)}
	rec := binary.BigEndian.AppendUint32(nil, info.Num)
	rec = binary.BigEndian.AppendUint64(rec, uint64(info.Created.UnixMilli()))
	b := s.db.NewBatch()
	defer b.Close()
	_ = b.Set(metaKey(metaShard, name), rec, nil)
	_ = b.Set(nextShardKey, binary.BigEndian.AppendUint32(nil, info.Num+1), nil)
	if err := b.Commit(pebble.Sync); err != nil {
		return ShardInfo{}, fmt.Errorf("shard: create shard %q: %w", name, err)
	}
	s.mu.shards[name] = info
	s.mu.nextShard = info.Num + 1
	return info, nil
}

// DropShard deletes a shard and all its data.
func (s *Store) DropShard(ctx context.Context, name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.closed {
		return ErrClosed
	}
	sh, err := s.shardLocked(name)
	if err != nil {
		return err
	}
	start, end := shardSpan(sh.Num)
	b := s.db.NewBatch()
	defer b.Close()
	_ = b.Delete(metaKey(metaShard, name), nil)
	_ = b.DeleteRange(start, end, nil)
	if err := b.Commit(pebble.Sync); err != nil {
		return fmt.Errorf("shard: drop shard %q: %w", name, err)
	}
	delete(s.mu.shards, name)
	// Its number is never used again: this only frees the cached floors.
	s.floors.mu.Lock()
	for k := range s.floors.m {
		if k.num == sh.Num {
			delete(s.floors.m, k)
		}
	}
	s.floors.mu.Unlock()
	return nil
}

// Shards lists the shards, sorted by name.
func (s *Store) Shards() []ShardInfo {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]ShardInfo, 0, len(s.mu.shards))
	for _, sh := range s.mu.shards {
		out = append(out, sh)
	}
	slices.SortFunc(out, func(a, b ShardInfo) int { return cmpString(a.Name, b.Name) })
	return out
}

// ShardSize estimates the bytes a shard occupies on disk.
func (s *Store) ShardSize(name string) (uint64, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.mu.closed {
		return 0, ErrClosed
	}
	sh, err := s.shardLocked(name)
	if err != nil {
		return 0, err
	}
	start, end := shardSpan(sh.Num)
	return s.db.EstimateDiskUsage(start, end)
}

// Stats are store-wide figures for metrics.
type Stats struct {
	// WALSyncs counts the fsyncs of the write-ahead log since Open. With
	// group commit it grows more slowly than the number of durable batches.
	WALSyncs uint64
	// WALSyncSeconds is the time those fsyncs took, in all.
	WALSyncSeconds float64
	// WALSyncBuckets counts the fsyncs that took at most each upper bound
	// (seconds): a few of Pebble's own bounds, about 0.1 ms to 10 s, so
	// every count is exact.
	WALSyncBuckets map[float64]uint64
	// DiskBytes is the size of the live sstables and WAL.
	DiskBytes uint64
	// MemTableBytes is the size of the memtables.
	MemTableBytes uint64
	// Compactions counts completed compactions.
	Compactions int64
}

// Stats returns current store-wide figures.
func (s *Store) Stats() Stats {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.mu.closed {
		return Stats{}
	}
	m := s.db.Metrics()
	st := Stats{
		DiskBytes:     m.DiskSpaceUsage(),
		MemTableBytes: m.MemTable.Size,
		Compactions:   m.Compact.Count,
	}
	if h := m.LogWriter.FsyncLatency; h != nil {
		var d dto.Metric
		if h.Write(&d) == nil && d.Histogram != nil {
			st.WALSyncs = d.Histogram.GetSampleCount()
			st.WALSyncSeconds = d.Histogram.GetSampleSum() / 1e9 // Pebble observes nanoseconds
			st.WALSyncBuckets = syncBuckets(d.Histogram.GetBucket())
		}
	}
	return st
}

// syncBucketBounds are the upper bounds, in seconds, the WAL's fsync
// histogram is exported with: each is taken to the first of Pebble's
// bounds at or above it (Pebble's are 0.1 ms apart up to 5 ms, then
// exponential to 10 s).
var syncBucketBounds = []float64{0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10}

// syncBuckets picks syncBucketBounds out of Pebble's fsync histogram
// (cumulative counts, bounds in nanoseconds), keyed by the bound it
// took, in seconds.
func syncBuckets(bs []*dto.Bucket) map[float64]uint64 {
	out := make(map[float64]uint64, len(syncBucketBounds))
	i := 0
	for _, want := range syncBucketBounds {
		for i < len(bs) && bs[i].GetUpperBound()/1e9 < want*(1-1e-9) {
			i++
		}
		if i == len(bs) {
			break
		}
		out[bs[i].GetUpperBound()/1e9] = bs[i].GetCumulativeCount()
	}
	return out
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
