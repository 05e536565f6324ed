package shard

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aviarydb/aviary/ids"
	"github.com/cockroachdb/pebble/v2"
)

// metaBound keys the persisted bound on content versions.
const metaBound byte = 'V'

var boundKey = metaKey(metaBound, "")

// boundMargin is how far above the version that needs it the persisted
// bound is raised: after a restart, writes are written blind again once
// the clock has passed the bound, at most boundMargin later.
var boundMargin = uint64(ids.MakeTimestamp(2000, 0)) // 2s of HLC wall time

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
// version plus boundMargin. Steady writes find it raised ahead of them: a
// write within half a margin of it raises it in the background.
//
// A build older than the bound stores versions without raising it: a
// database it wrote to must be opened once with RescanVersionBound.
type versionBound struct {
	durable atomic.Uint64
	raising atomic.Bool    // a background raise is under way
	wg      sync.WaitGroup // background raises; Close waits for them
	mu      sync.Mutex     // serialises raises of durable
}

// loadBound reads the persisted bound and starts every stripe at it. A
// database written before the bound existed has none: its content records
// are scanned once for their highest version, which is then persisted.
// s.mu.shards must be loaded.
func (s *Store) loadBound() error {
	var (
		b     uint64
		found bool
		err   error
	)
	if !s.opts.RescanVersionBound {
		if b, found, err = getUint(s.db, boundKey, 8); err != nil {
			return fmt.Errorf("%w (the version bound; open with RescanVersionBound to scan for it)", err)
		}
	}
	if found {
		s.bound.durable.Store(b)
	} else if b, err = s.scanBound(); err != nil {
		return err
	}
	for i := range s.stripes {
		s.stripes[i].bound = b
	}
	return nil
}

// scanBound scans the content records for their highest version and
// persists it as the bound.
func (s *Store) scanBound() (uint64, error) {
	start := time.Now()
	b, records, err := s.scanHighestVersion()
	if err != nil {
		return 0, err
	}
	s.bound.mu.Lock()
	err = s.persistBoundLocked(b)
	s.bound.mu.Unlock()
	if err != nil {
		return 0, err
	}
	if records > 0 {
		s.opts.Logger.Info("shard: scanned the content records for the highest version", "records", records, "highest", ids.Timestamp(b), "took", time.Since(start).Round(time.Millisecond))
	}
	return b, nil
}

// scanHighestVersion returns the highest version of any content record,
// reading each shard's content space only. A record that does not decode
// is logged and skipped: a write over it is blind or fails, as before.
func (s *Store) scanHighestVersion() (highest uint64, records int, err error) {
	for _, sh := range s.mu.shards {
		lo := append(appendShard(nil, sh.Num), spaceContent)
		it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: prefixEnd(lo)})
		if err != nil {
			return 0, 0, err
		}
		for it.First(); it.Valid(); it.Next() {
			v, err := it.ValueAndErr()
			if err != nil {
				_ = it.Close()
				return 0, 0, err
			}
			rec, err := decodeRecord(v)
			if err != nil {
				s.opts.Logger.Warn("shard: version bound scan skipped an undecodable record", "shard", sh.Name, "key", fmt.Sprintf("%x", it.Key()), "err", err)
				continue
			}
			records++
			highest = max(highest, uint64(rec.version.HLC))
		}
		if err := errors.Join(it.Error(), it.Close()); err != nil {
			return 0, 0, err
		}
	}
	return highest, records, nil
}

// persistAtLeast makes the persisted bound at least v, synced, before it
// returns. When it has to move, it moves boundMargin above v. A v within
// half a margin of the bound moves it in the background, so that the
// writes that follow rarely wait for it.
func (s *Store) persistAtLeast(v uint64) error {
	b := &s.bound
	if d := b.durable.Load(); v <= d {
		if d >= boundMargin && v > d-boundMargin/2 && b.raising.CompareAndSwap(false, true) {
			// The caller holds s.mu for reading: Close waits for this.
			b.wg.Add(1)
			go func() {
				defer b.wg.Done()
				defer b.raising.Store(false)
				if err := s.raise(d + 1); err != nil {
					s.opts.Logger.Warn("shard: raising the version bound ahead of writes failed; the next write above it retries", "err", err)
				}
			}()
		}
		return nil
	}
	return s.raise(v)
}

// raise persists a bound of v plus boundMargin unless one at or above v is.
func (s *Store) raise(v uint64) error {
	b := &s.bound
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
