package shard

import (
	"bytes"
	"context"
	"fmt"
	"sync"

	"github.com/cockroachdb/pebble/v2"
)

// KeyFilter selects data records: content records and index entries. For a
// content record index is false, key is the content key and owner is 0; for
// an index entry index is true, key is nil and owner is the entry's owner.
// key aliases scan memory: a filter must not retain or modify it. A nil
// KeyFilter selects every record. Filters are called from the calling
// goroutine only, but must not call back into the Store.
type KeyFilter func(table string, index bool, key []byte, owner uint64) bool

// StoredBytes returns the bytes of key and value that m's record occupies
// in a shard: its shard-relative key and its encoded value (version, flags
// and value or payload). It is the measure of Export.Size, of the maxBytes
// of Export.Next and of Digest.Bytes, so the StoredBytes of the mutations
// of the pages of an export sum to its Size.
func (m *Mutation) StoredBytes() int {
	n := 2 + len(m.Table) + recordHeaderLen
	switch m.Op {
	case OpAppend, OpRemove:
		return n + 20 + len(m.Payload)
	}
	return n + len(m.Key) + len(m.Value)
}

// ExportOptions select what an Export reads.
type ExportOptions struct {
	// Filter selects the records exported (nil: all).
	Filter KeyFilter
	// Start and End bound the shard-relative keys k exported to
	// Start <= k < End; nil is unbounded. See ContentSpan and IndexSpan.
	Start, End []byte
}

// Export reads the content records and index entries of one shard from a
// single Pebble snapshot taken by NewExport, so that every call sees the
// same consistent view whatever is written meanwhile: an online migration
// copies the snapshot page by page while later writes reach both copies.
//
// An Export is safe for concurrent use; its calls are serialized. It pins
// the snapshot's data until Close (or the Store's Close), so close it
// promptly. If the shard is dropped after NewExport, later calls fail with
// ErrShardNotFound.
type Export struct {
	s      *Store
	shard  string
	num    uint32
	filter KeyFilter
	start  []byte
	end    []byte

	mu          sync.Mutex
	snap        *pebble.Snapshot // nil once closed
	storeClosed bool             // the snapshot was released by Store.Close
	sized       bool
	records     uint64
	bytes       uint64
}

// NewExport takes a snapshot of shard and returns an Export reading it. The
// caller must Close it.
func (s *Store) NewExport(shard string, o ExportOptions) (*Export, error) {
	if shard == "" {
		return nil, fmt.Errorf("%w: shard name is empty", ErrInvalid)
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.mu.closed {
		return nil, ErrClosed
	}
	sh, err := s.shardLocked(shard)
	if err != nil {
		return nil, err
	}
	e := &Export{
		s:      s,
		shard:  shard,
		num:    sh.Num,
		filter: o.Filter,
		start:  bytes.Clone(o.Start),
		end:    bytes.Clone(o.End),
		snap:   s.db.NewSnapshot(),
	}
	s.exports.mu.Lock()
	if s.exports.open == nil {
		s.exports.open = map[*Export]struct{}{}
	}
	s.exports.open[e] = struct{}{}
	s.exports.mu.Unlock()
	return e, nil
}

// Shard returns the name of the exported shard.
func (e *Export) Shard() string { return e.shard }

// begin checks that the export can read (e.mu held): open, the store open
// and the shard not dropped. It registers the read with the store's scans
// and returns its end.
func (e *Export) begin() (func(), error) {
	if e.snap == nil {
		if e.storeClosed {
			return nil, ErrClosed
		}
		return nil, fmt.Errorf("%w: export of shard %q is closed", ErrInvalid, e.shard)
	}
	s := e.s
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.mu.closed {
		return nil, ErrClosed
	}
	if sh, ok := s.mu.shards[e.shard]; !ok || sh.Num != e.num {
		return nil, fmt.Errorf("%w: %q was dropped during its export", ErrShardNotFound, e.shard)
	}
	s.scans.Add(1)
	return s.scans.Done, nil
}

// iter returns an iterator over the snapshot (e.mu held, begin called).
func (e *Export) iter() (*pebble.Iterator, error) {
	lo, hi := shardSpan(e.num)
	return e.snap.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
}

// Size returns the number of records the export selects (tombstones
// included) and their bytes, as Mutation.StoredBytes counts them.
func (e *Export) Size(ctx context.Context) (records, bytes uint64, err error) {
	if err := ctx.Err(); err != nil {
		return 0, 0, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	done, err := e.begin()
	if err != nil {
		return 0, 0, err
	}
	defer done()
	if e.sized {
		return e.records, e.bytes, nil
	}
	it, err := e.iter()
	if err != nil {
		return 0, 0, err
	}
	defer it.Close()
	_, err = scanData(ctx, it, e.num, e.start, e.end, e.filter, func(k []byte, _ *decodedKey, v []byte) (bool, error) {
		records++
		bytes += uint64(len(k) - shardPrefixLen + len(v))
		return true, nil
	})
	if err != nil {
		return 0, 0, err
	}
	e.sized, e.records, e.bytes = true, records, bytes
	return records, bytes, nil
}

// Next returns the next page of the export in key order: the selected
// records whose shard-relative keys are strictly after after (nil: from the
// start) as versioned mutations, like ExportPage. A page holds at most
// maxRecords records (at most Limits.MaxBatchMutations) and at most
// maxBytes bytes as Mutation.StoredBytes counts them, except that it always
// holds one record if any remains; a page with maxBytes at most
// Limits.MaxBatchBytes can be applied as one batch. The page's byte count is
// the sum of its mutations' StoredBytes.
//
// next is the shard-relative key of the page's last record, to pass as
// after for the following page; done reports that no selected record
// follows it. An empty page is always done.
func (e *Export) Next(ctx context.Context, after []byte, maxRecords, maxBytes int) (muts []Mutation, next []byte, done bool, err error) {
	if err := ctx.Err(); err != nil {
		return nil, nil, false, err
	}
	lim := e.s.opts.Limits.MaxBatchMutations
	if maxRecords < 1 || maxRecords > lim {
		return nil, nil, false, fmt.Errorf("%w: max records %d, must be in [1, %d]", ErrOutOfRange, maxRecords, lim)
	}
	if maxBytes < 1 {
		return nil, nil, false, fmt.Errorf("%w: max bytes %d, must be positive", ErrOutOfRange, maxBytes)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	end, err := e.begin()
	if err != nil {
		return nil, nil, false, err
	}
	defer end()
	it, err := e.iter()
	if err != nil {
		return nil, nil, false, err
	}
	defer it.Close()
	start := e.start
	if after != nil {
		if a := append(bytes.Clone(after), 0); bytes.Compare(a, start) > 0 {
			start = a
		}
	}
	size := 0
	return exportPage(ctx, it, e.shard, e.num, start, e.end, e.filter, func(n int, _ *Mutation, recBytes int) bool {
		if n == maxRecords || (n > 0 && size+recBytes > maxBytes) {
			return false
		}
		size += recBytes
		return true
	})
}

// Close releases the export's snapshot. Closing twice, or after the Store
// was closed, does nothing.
func (e *Export) Close() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.snap == nil {
		return nil
	}
	err := e.snap.Close()
	e.snap = nil
	s := e.s
	s.exports.mu.Lock()
	delete(s.exports.open, e)
	s.exports.mu.Unlock()
	return err
}

// closeExports releases the snapshots of the exports still open. Store.Close
// calls it once no read can start and none is running, before closing
// Pebble.
func (s *Store) closeExports() {
	s.exports.mu.Lock()
	open := s.exports.open
	s.exports.open = nil
	s.exports.mu.Unlock()
	for e := range open {
		e.mu.Lock()
		if e.snap != nil {
			_ = e.snap.Close()
			e.snap = nil
			e.storeClosed = true
		}
		e.mu.Unlock()
	}
}

// ExportPage reads up to limit records of a shard, in key order, starting
// after the shard-relative key after (nil: from the start), and returns
// them as versioned mutations that rebuild them when applied to another
// copy of the shard: content records as puts or deletes, index entries as
// appends or removes (with their tombstones, so that a copy also learns
// what was deleted). Counts and month markers are not exported: applying
// the entries rebuilds them. It returns the key to resume after and
// whether the shard is exhausted.
//
// Each page is read from its own consistent view. A copy made of pages
// taken while the shard changes is still exact once every write made
// meanwhile also reached the copy (a migration routes them to both), since
// applying keeps the newest version of every record whatever the order.
// NewExport reads every page from one view instead.
func (s *Store) ExportPage(ctx context.Context, shard string, after []byte, limit int) (muts []Mutation, next []byte, done bool, err error) {
	if limit < 1 || limit > s.opts.Limits.MaxBatchMutations {
		return nil, nil, false, fmt.Errorf("%w: limit %d, must be in [1, %d]", ErrOutOfRange, limit, s.opts.Limits.MaxBatchMutations)
	}
	if shard == "" {
		return nil, nil, false, fmt.Errorf("%w: shard name is empty", ErrInvalid)
	}
	num, it, closeIt, err := s.beginScan(shard)
	if err != nil {
		return nil, nil, false, err
	}
	defer closeIt()
	var start []byte
	if after != nil {
		start = append(bytes.Clone(after), 0) // strictly after
	}
	size := 0
	return exportPage(ctx, it, shard, num, start, nil, nil, func(n int, m *Mutation, _ int) bool {
		if n == limit || size >= s.opts.Limits.MaxBatchBytes/2 {
			return false
		}
		size += m.Size()
		return true
	})
}

// pageFits reports whether a record (as mutation m, of recBytes stored
// bytes) may join a page already holding n records, and if so accounts for
// it.
type pageFits func(n int, m *Mutation, recBytes int) bool

// exportPage reads the selected records of shard num from start (inclusive,
// shard-relative) to end while fits accepts them, as mutations of shard.
func exportPage(ctx context.Context, it *pebble.Iterator, shard string, num uint32, start, end []byte, filter KeyFilter, fits pageFits) (muts []Mutation, next []byte, done bool, err error) {
	var last []byte // next: the page's last key
	done, err = scanData(ctx, it, num, start, end, filter, func(k []byte, d *decodedKey, v []byte) (bool, error) {
		m, err := exportMutation(shard, k, d, v)
		if err != nil {
			return false, err
		}
		rel := k[shardPrefixLen:]
		if !fits(len(muts), &m, len(rel)+len(v)) {
			return false, nil
		}
		muts = append(muts, m)
		last = append(last[:0], rel...) // rel aliases the iterator
		return true, nil
	})
	if err != nil {
		return nil, nil, false, err
	}
	return muts, last, done, nil
}

// exportMutation converts the record (k, v) of a shard (k absolute, d its
// decoding if already done) into the mutation that rebuilds it.
func exportMutation(shard string, k []byte, d *decodedKey, v []byte) (Mutation, error) {
	if d == nil {
		dk, err := decodeKey(k)
		if err != nil {
			return Mutation{}, err
		}
		d = &dk
	}
	rec, err := decodeRecord(v)
	if err != nil {
		return Mutation{}, fmt.Errorf("%w (key %x)", err, k)
	}
	m := Mutation{Shard: shard, Table: d.table, Version: rec.version}
	switch {
	case d.space == spaceContent && rec.tombstone:
		m.Op, m.Key = OpDelete, bytes.Clone(d.key)
	case d.space == spaceContent:
		m.Op, m.Key, m.Value = OpPut, bytes.Clone(d.key), bytes.Clone(rec.value)
	case rec.tombstone:
		m.Op, m.Owner, m.ID = OpRemove, d.owner, d.id
	default:
		m.Op, m.Owner, m.ID, m.Payload = OpAppend, d.owner, d.id, bytes.Clone(rec.value)
	}
	return m, nil
}

// dataBounds returns the absolute bounds of the content and index records of
// shard num whose shard-relative keys k satisfy start <= k < end (nil:
// unbounded); ok is false if there are none.
func dataBounds(num uint32, start, end []byte) (lo, hi []byte, ok bool) {
	rlo := []byte{spaceContent}
	if bytes.Compare(start, rlo) > 0 {
		rlo = start
	}
	rhi := []byte{spaceIndex + 1}
	if end != nil && bytes.Compare(end, rhi) < 0 {
		rhi = end
	}
	if bytes.Compare(rlo, rhi) >= 0 {
		return nil, nil, false
	}
	return append(appendShard(nil, num), rlo...), append(appendShard(nil, num), rhi...), true
}

// scanCheckEvery is how many records a scan reads between checks of its
// context.
const scanCheckEvery = 1024

// scanData calls fn, in key order, for every content record and index
// entry of shard num selected by filter whose shard-relative key k satisfies
// start <= k < end (nil: unbounded). fn receives the absolute key, its
// decoding if the filter needed one (else nil) and the value, all aliasing
// the iterator; it returns false to stop the scan. exhausted reports that
// the scan ran to its end. it is repositioned and its bounds replaced.
func scanData(ctx context.Context, it *pebble.Iterator, num uint32, start, end []byte, filter KeyFilter, fn func(k []byte, d *decodedKey, v []byte) (bool, error)) (exhausted bool, err error) {
	lo, hi, ok := dataBounds(num, start, end)
	if !ok {
		return true, nil
	}
	it.SetBounds(lo, hi)
	n := 0
	for valid := it.First(); valid; valid = it.Next() {
		if n++; n%scanCheckEvery == 0 {
			if err := ctx.Err(); err != nil {
				return false, err
			}
		}
		k := it.Key()
		var d *decodedKey
		if filter != nil {
			dk, err := decodeKey(k)
			if err != nil {
				return false, err
			}
			d = &dk
			if !filter(dk.table, dk.space == spaceIndex, dk.key, dk.owner) {
				continue
			}
		}
		v, err := it.ValueAndErr()
		if err != nil {
			return false, err
		}
		more, err := fn(k, d, v)
		if err != nil || !more {
			return false, err
		}
	}
	return true, it.Error()
}
