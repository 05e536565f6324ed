package shard

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"sync"
	"sync/atomic"

	"github.com/cockroachdb/pebble/v2"
)

// metaBound keys the persisted bound on content versions.
const metaBound byte = 'V'

var boundKey = metaKey(metaBound, "")

// boundMargin is how far above the version that needs it the persisted
// bound is raised: one synced write per boundMargin of steady local
// writes, and after a restart blind writes resume once the clock has
// passed the bound, at most boundMargin later.
const boundMargin = 2000 << 16 // 2s of HLC wall time

// Blind writes. A content Put or Delete whose version is above that of
// every record its key may hold wins whatever the key holds, so it is
// written without reading the record it replaces. That is the common case,
// not the exception: a node stamps its own writes with its HLC, which is
// ahead of every version it has stamped or applied, and that read was the
// largest single cost of a write.
//
// Each key-lock stripe keeps a bound at or above the version of every
// content record of its keys, read and raised under the stripe's lock: a
// write above it is written blind and raises it, so a later writer of the
// same key (which must take the same lock) sees the raised bound and
// reads. Per stripe rather than one for the store, because the node's
// committers apply batches stamped close together in any order, and one
// bound would send every batch that lost the race to the read.
//
// The bounds start, when the store opens, at a persisted bound that is at
// or above every content version in the database (versionBound): before a
// batch with a version above it commits, it is raised (synced) to that
// version plus boundMargin, so steady writes raise it rarely.
type versionBound struct {
	durable atomic.Uint64
	mu      sync.Mutex // serialises raises of durable
}

// loadBound reads the persisted bound and starts every stripe at it. A
// database written before the bound existed has none: its content records
// are scanned once for their highest version, which is then persisted.
func (s *Store) loadBound() error {
	var b uint64
	v, closer, err := s.db.Get(boundKey)
	switch {
	case err == nil:
		if len(v) != 8 {
			_ = closer.Close()
			return fmt.Errorf("shard: corrupt version bound (%d bytes)", len(v))
		}
		b = binary.BigEndian.Uint64(v)
		_ = closer.Close()
		s.bound.durable.Store(b)
	case errors.Is(err, pebble.ErrNotFound):
		if b, err = s.scanHighestVersion(); err != nil {
			return err
		}
		s.bound.mu.Lock()
		err = s.persistBoundLocked(b)
		s.bound.mu.Unlock()
		if err != nil {
			return err
		}
	default:
		return fmt.Errorf("shard: read version bound: %w", err)
	}
	for i := range s.stripes {
		s.stripes[i].bound = b
	}
	return nil
}

// scanHighestVersion returns the highest version of any content record.
func (s *Store) scanHighestVersion() (uint64, error) {
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: appendShard(nil, 1)})
	if err != nil {
		return 0, err
	}
	defer it.Close()
	var highest uint64
	for it.First(); it.Valid(); it.Next() {
		k := it.Key()
		if len(k) <= shardPrefixLen || k[shardPrefixLen] != spaceContent {
			continue
		}
		v, err := it.ValueAndErr()
		if err != nil {
			return 0, err
		}
		rec, err := decodeRecord(v)
		if err != nil {
			return 0, fmt.Errorf("%w (key %x)", err, k)
		}
		highest = max(highest, uint64(rec.version.HLC))
	}
	return highest, it.Error()
}

// persistAtLeast makes the persisted bound at least v, synced, before it
// returns. When it has to move, it moves boundMargin above v, so that the
// writes that follow need not move it again.
func (s *Store) persistAtLeast(v uint64) error {
	b := &s.bound
	if v <= b.durable.Load() {
		return nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if v <= b.durable.Load() {
		return nil
	}
	next := uint64(math.MaxUint64)
	if v < next-boundMargin {
		next = v + boundMargin
	}
	return s.persistBoundLocked(next)
}

// persistBoundLocked writes the bound b, synced. s.bound.mu must be held.
func (s *Store) persistBoundLocked(b uint64) error {
	if err := s.db.Set(boundKey, binary.BigEndian.AppendUint64(nil, b), pebble.Sync); err != nil {
		return fmt.Errorf("shard: persist version bound: %w", err)
	}
	s.bound.durable.Store(b)
	return nil
}
