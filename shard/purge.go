package shard

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/aviarydb/aviary/ids"
	"github.com/cockroachdb/pebble/v2"
)

// purgeChunk is how many records one purge batch deletes at most.
const purgeChunk = 1000

// PurgeMatching physically deletes every content record and index entry of
// shard selected by filter, live or tombstoned, leaving no tombstones: it
// removes the part of a shard that a split moved to another shard. The
// counts of live entries stay exact (a count reaching 0 is deleted: a
// purge is rare, unlike Apply's zero counts, which it keeps); month markers
// stay. filter must not be nil.
//
// It works in batches of at most 1000 records, each read from a fresh view,
// then deleted atomically and durably under the locks Apply takes for those
// records, and only if the record still holds what the scan read: a
// concurrent Apply is never lost or miscounted, and a record it rewrote
// after the scan read it stays (call PurgeMatching again to remove it). A
// failure leaves the batches before it purged. It returns the number of
// records deleted.
func (s *Store) PurgeMatching(ctx context.Context, shard string, filter KeyFilter) (records uint64, err error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if shard == "" {
		return 0, fmt.Errorf("%w: shard name is empty", ErrInvalid)
	}
	if filter == nil {
		return 0, fmt.Errorf("%w: purge filter is nil (it would purge the whole shard; drop it instead)", ErrInvalid)
	}
	var (
		num   uint32
		start []byte // shard-relative: where the next batch's scan starts
		cands []staleRecord
	)
	for first := true; ; first = false {
		n, it, done, err := s.beginScan(shard)
		if err != nil {
			return records, err
		}
		if first {
			num = n
		} else if n != num {
			done()
			return records, fmt.Errorf("%w: %q was dropped during the purge", ErrShardNotFound, shard)
		}
		cands = cands[:0]
		exhausted, err := scanData(ctx, it, num, start, nil, filter, func(k []byte, d *decodedKey, v []byte) (bool, error) {
			if len(cands) == purgeChunk {
				return false, nil
			}
			m := &Mutation{Table: d.table, Op: OpDelete, Key: bytes.Clone(d.key), Owner: d.owner}
			if d.space == spaceIndex {
				m.Op = OpRemove
			}
			cands = append(cands, staleRecord{
				r:   resolved{Mutation: m, num: num, month: d.month},
				key: bytes.Clone(k),
				enc: bytes.Clone(v),
			})
			return true, nil
		})
		done()
		if err != nil {
			return records, err
		}
		if len(cands) > 0 {
			n, err := s.purgeIfUnchanged(shard, num, cands)
			records += uint64(n)
			if err != nil {
				return records, err
			}
			start = append(bytes.Clone(cands[len(cands)-1].key[shardPrefixLen:]), 0)
		}
		if exhausted {
			return records, nil
		}
		if err := ctx.Err(); err != nil {
			return records, err
		}
	}
}

// purgeIfUnchanged deletes each record that still holds exactly the bytes
// the scan read, and the count of each live entry deleted, in one durable
// batch under the records' stripe locks. It returns how many it deleted.
func (s *Store) purgeIfUnchanged(shard string, num uint32, recs []staleRecord) (int, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.mu.closed {
		return 0, ErrClosed
	}
	if sh, ok := s.mu.shards[shard]; !ok || sh.Num != num {
		return 0, fmt.Errorf("%w: %q was dropped during the purge", ErrShardNotFound, shard)
	}
	idx := make([]int, len(recs))
	for i := range recs {
		idx[i] = stripeOf(&recs[i].r)
	}
	unlock, _ := s.lockStripeSet(idx)
	locked := true
	defer func() {
		if locked {
			unlock()
		}
	}()
	b := s.db.NewBatch()
	defer b.Close()
	type countDelta struct {
		owner uint64
		month uint32
		n     uint64
	}
	var (
		deltas = map[string]*countDelta{}
		order  []string // count keys in first-seen order, for determinism
	)
	n := 0
	for i := range recs {
		c := &recs[i]
		v, closer, err := s.db.Get(c.key)
		if errors.Is(err, pebble.ErrNotFound) {
			continue // gone already (collected, or dropped by retention)
		}
		if err != nil {
			return 0, err
		}
		same := bytes.Equal(v, c.enc)
		_ = closer.Close()
		if !same {
			continue // rewritten since the scan: keep it
		}
		if err := b.Delete(c.key, nil); err != nil {
			return 0, err
		}
		n++
		if c.r.Op != OpRemove {
			continue
		}
		rec, err := decodeRecord(c.enc)
		if err != nil {
			return 0, fmt.Errorf("%w (key %x)", err, c.key)
		}
		if rec.tombstone {
			continue // tombstones are not counted
		}
		ck := string(countKey(num, c.r.Table, c.r.month, c.r.Owner))
		d, ok := deltas[ck]
		if !ok {
			d = &countDelta{owner: c.r.Owner, month: c.r.month}
			deltas[ck] = d
			order = append(order, ck)
		}
		d.n++
	}
	for _, ck := range order {
		d := deltas[ck]
		cur, _, err := getUint(s.db, []byte(ck), 8)
		if err != nil {
			return 0, err
		}
		if cur < d.n {
			return 0, fmt.Errorf("shard: count of owner %d month %s is %d, below the %d live entries purged (corrupt count)", d.owner, ids.MonthString(d.month), cur, d.n)
		}
		if cur == d.n {
			_ = b.Delete([]byte(ck), nil)
		} else {
			_ = b.Set([]byte(ck), binary.BigEndian.AppendUint64(nil, cur-d.n), nil)
		}
	}
	if b.Empty() {
		return 0, nil
	}
	// As in apply: the stripes are held until the batch is visible, then
	// released while it syncs.
	if err := s.db.ApplyNoSyncWait(b, pebble.Sync); err != nil {
		return 0, fmt.Errorf("shard: purge: commit: %w", err)
	}
	unlock()
	locked = false
	if err := b.SyncWait(); err != nil {
		return 0, fmt.Errorf("shard: purge: sync: %w", err)
	}
	return n, nil
}
