package shard

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"

	"github.com/aviarydb/aviary/ids"
	"github.com/cockroachdb/pebble/v2"
)

// DropMonthsBefore deletes an index table's entries, counts and month
// markers for every month before month, and raises the table's retention
// floor to month, so that appends of older entries arriving later (replays,
// replication) are ignored rather than resurrected. It is idempotent; a floor
// never moves down.
func (s *Store) DropMonthsBefore(ctx context.Context, shard, table string, month uint32) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	num, err := s.readTargetLocked(shard, table, KindIndex)
	if err != nil {
		return err
	}
	floor, err := s.retentionFloorLocked(num, table)
	if err != nil {
		return err
	}
	if month <= floor || month == 0 {
		return nil
	}
	b := s.db.NewBatch()
	defer b.Close()
	_ = b.Set(retentionKey(num, table), binary.BigEndian.AppendUint32(nil, month), nil)
	// Months before month are stored as ^m > ^month, i.e. from ^(month-1) on.
	for _, sp := range []byte{spaceIndex, spaceCount, spaceMonth} {
		p := tablePrefix(num, sp, table)
		start := binary.BigEndian.AppendUint32(append([]byte(nil), p...), ^(month - 1))
		_ = b.DeleteRange(start, prefixEnd(p), nil)
	}
	err = b.Commit(pebble.Sync)
	s.floors.mu.Lock()
	if err != nil {
		// A commit that failed in its fsync is applied all the same:
		// read the floor again.
		delete(s.floors.m, floorKey{num, table})
	} else {
		s.floors.m[floorKey{num, table}] = month
	}
	s.floors.mu.Unlock()
	if err != nil {
		return fmt.Errorf("shard: drop months of %q before %s: %w", table, ids.MonthString(month), err)
	}
	return nil
}

// RetentionFloor returns the month before which an index table's months
// were dropped (0 if none were).
func (s *Store) RetentionFloor(shard, table string) (uint32, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	num, err := s.readTargetLocked(shard, table, KindIndex)
	if err != nil {
		return 0, err
	}
	return s.retentionFloorLocked(num, table)
}

// floorKey names an index table of a shard, by the shard's number.
type floorKey struct {
	num   uint32
	table string
}

// retentionFloorLocked returns the retention floor of table in shard num,
// from the store's cache or, the first time, from the database. The caller
// holds mu, for reading or writing. A floor is written only with mu held
// for writing (DropMonthsBefore, DropShard), so with mu held the cached
// value is the stored one.
func (s *Store) retentionFloorLocked(num uint32, table string) (uint32, error) {
	k := floorKey{num, table}
	s.floors.mu.RLock()
	f, ok := s.floors.m[k]
	s.floors.mu.RUnlock()
	if ok {
		return f, nil
	}
	v, _, err := getUint(s.db, retentionKey(num, table), 4)
	if err != nil {
		return 0, err
	}
	s.floors.mu.Lock()
	s.floors.m[k] = uint32(v)
	s.floors.mu.Unlock()
	return uint32(v), nil
}

// collectChunk is how many tombstones one collection step deletes at once.
const collectChunk = 256

// CollectTombstones deletes the content and index tombstones of every shard
// whose version is older than horizon. A replayed write older than a
// collected tombstone can reappear, so horizon must trail the present by more
// than the longest replication outage retained (the grace). It returns the
// number of tombstones deleted. Collection is not itself durable: a crash
// may bring some back, to be collected again.
func (s *Store) CollectTombstones(ctx context.Context, horizon ids.Timestamp) (int, error) {
	_, it, done, err := s.beginScan("")
	if err != nil {
		return 0, err
	}
	defer done()
	var cands []staleRecord
	collected := 0
	flush := func() error {
		if len(cands) == 0 {
			return nil
		}
		n, err := s.deleteIfUnchanged(cands)
		collected += n
		cands = cands[:0]
		return err
	}
	for it.First(); it.Valid(); it.Next() {
		k := it.Key()
		if len(k) <= shardPrefixLen || (k[shardPrefixLen] != spaceContent && k[shardPrefixLen] != spaceIndex) {
			continue
		}
		rec, err := decodeRecord(it.Value())
		if err != nil {
			return collected, err
		}
		if !rec.tombstone || rec.version.HLC >= horizon {
			continue
		}
		d, err := decodeKey(k)
		if err != nil {
			return collected, err
		}
		m := &Mutation{Table: d.table, Key: append([]byte(nil), d.key...), Owner: d.owner, Op: OpDelete}
		if d.space == spaceIndex {
			m.Op = OpRemove
		}
		cands = append(cands, staleRecord{
			r:   resolved{Mutation: m, num: d.shard},
			key: append([]byte(nil), k...),
			enc: append([]byte(nil), it.Value()...),
		})
		if len(cands) == collectChunk {
			if err := flush(); err != nil {
				return collected, err
			}
			if err := ctx.Err(); err != nil {
				return collected, err
			}
		}
	}
	if err := it.Error(); err != nil {
		return collected, err
	}
	return collected, flush()
}

// staleRecord is a record a scan saw, to be deleted if it is still there.
type staleRecord struct {
	r   resolved
	key []byte
	enc []byte
}

// deleteIfUnchanged deletes each record's key if it still holds exactly the
// bytes the scan saw, under the same locks as a mutation, so a write that
// raced the scan is never deleted.
func (s *Store) deleteIfUnchanged(recs []staleRecord) (int, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.mu.closed {
		return 0, ErrClosed
	}
	idx := make([]int, len(recs))
	for i := range recs {
		idx[i] = stripeOf(&recs[i].r)
	}
	unlock, _ := s.lockStripeSet(idx)
	defer unlock()
	b := s.db.NewBatch()
	defer b.Close()
	n := 0
	for _, c := range recs {
		v, closer, err := s.db.Get(c.key)
		if err != nil {
			continue // gone already (or dropped with its shard)
		}
		same := bytes.Equal(v, c.enc)
		_ = closer.Close()
		if same {
			_ = b.Delete(c.key, nil)
			n++
		}
	}
	if b.Empty() {
		return 0, nil
	}
	if err := b.Commit(pebble.NoSync); err != nil {
		return 0, fmt.Errorf("shard: collect tombstones: %w", err)
	}
	return n, nil
}
